"""Presentation helpers shared by the dashboard and the API."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from orchestrator.models import NotificationChannel

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


def mask_channel_target(channel: NotificationChannel) -> str:
    """The channel's target as its channel class masks it (as in the admin), never in clear.

    A channel class that masks nothing (the base class's default, kept by third-party kinds) still
    gets URLs masked by :func:`mask_target`: a URL target is assumed to carry a credential.
    """
    from orchestrator.notifications.registry import UnknownChannelKind, channel_class

    try:
        masked = channel_class(channel.kind).mask_target(channel.target)
    except UnknownChannelKind:
        masked = channel.target
    return masked if masked != channel.target else mask_target(channel.target)
