"""Benchmarks: `python -m bench` prints a markdown table per benchmark."""
