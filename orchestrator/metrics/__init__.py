"""Prometheus metrics, read from the database at each scrape (see docs/metrics.md)."""
