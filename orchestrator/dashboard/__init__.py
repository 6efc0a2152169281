"""The operator dashboard: staff pages over the run history, with Run now / Enable / Disable."""
