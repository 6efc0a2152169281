"""Channel kinds: ``kind -> dotted path`` of the class, imported on first use.

Adding a kind (Teams, PagerDuty, a generic webhook) is one new module and one line here.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from orchestrator.notifications.base import Channel

CHANNELS: dict[str, tuple[str, str]] = {
    # kind: (label shown in the admin, class path)
    "slack": ("Slack", "orchestrator.notifications.slack.SlackChannel"),
    "email": ("Email", "orchestrator.notifications.email.EmailChannel"),
}


class UnknownChannelKind(LookupError):
    pass


def kind_choices() -> list[tuple[str, str]]:
    """Choices of ``NotificationChannel.kind`` (a callable, so migrations stay stable)."""
    return [(kind, label) for kind, (label, _) in CHANNELS.items()]


@cache
def channel_class(kind: str) -> type[Channel]:
    try:
        _, path = CHANNELS[kind]
    except KeyError:
        raise UnknownChannelKind(
            f"Unknown channel kind {kind!r}; known kinds: {', '.join(CHANNELS)}."
        ) from None
    return import_string(path)


def get_channel(kind: str, target: str) -> Channel:
    """An instance of the channel class of ``kind`` for ``target``."""
    return channel_class(kind)(target)
