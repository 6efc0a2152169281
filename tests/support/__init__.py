"""Look-alikes of external services for tests: a Slack HTTP server and an SMTP server."""
