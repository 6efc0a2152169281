"""Presentation helpers shared by the dashboard and the API."""

from __future__ import annotations

from urllib.parse import urlsplit

# Characters of a secret URL's path kept in clear, so operators can tell two webhooks apart.
_VISIBLE_TAIL = 4


def mask_target(target: str) -> str:
    """A channel target safe to show: URLs lose everything but their host and last characters.

    Slack incoming-webhook URLs (and any other URL) carry their credential in the path, so
    ``https://hooks.slack.com/services/T0/B0/abcdefgh`` becomes ``https://hooks.slack.com/…/efgh``.
    User info and query strings are dropped too. Channel names and email addresses are not secrets
    and are returned unchanged.
    """
    value = (target or "").strip()
    if "://" not in value:
        return value
    parts = urlsplit(value)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    path = parts.path.rstrip("/")
    tail = path[-_VISIBLE_TAIL:] if len(path) > 3 * _VISIBLE_TAIL else ""
    return f"{parts.scheme}://{host}/…/{tail}" if tail else f"{parts.scheme}://{host}/…"
