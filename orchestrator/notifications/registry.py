"""Channel kinds: ``kind -> dotted path`` of the class, imported on first use.

The built-in kinds are listed here; a project adds its own (or the shipped test kind) with
``ORCHESTRATOR["CHANNEL_KINDS"] = {"kind": "dotted.path.Class"}``, one module per kind over
:class:`orchestrator.notifications.base.Channel`. Kinds are choices of
``NotificationChannel.kind`` through a callable, so adding one needs no migration.
"""

from __future__ import annotations

from functools import cache

from django.utils.module_loading import import_string

from orchestrator.conf import conf
from orchestrator.notifications.base import Channel
from orchestrator.notifications.redact import MASK

BUILTIN_CHANNELS: dict[str, str] = {
    "slack": "orchestrator.notifications.slack.SlackChannel",
    "email": "orchestrator.notifications.email.EmailChannel",
}
# The in-memory kind a project's own tests can assert on; enabled through CHANNEL_KINDS.
TEST_CHANNEL = "orchestrator.notifications.testing.TestChannel"


class UnknownChannelKind(LookupError):
    pass


def channel_paths() -> dict[str, str]:
    """Every kind known now: the built-in ones and ``ORCHESTRATOR["CHANNEL_KINDS"]``."""
    return {**BUILTIN_CHANNELS, **conf.CHANNEL_KINDS}


def kind_choices() -> list[tuple[str, str]]:
    """Choices of ``NotificationChannel.kind``: each kind with its class's label."""
    choices = []
    for kind in channel_paths():
        try:
            label = channel_class(kind).label or kind
        except ImportError:
            label = kind  # reported by system check orchestrator.E004
        choices.append((kind, label))
    return choices


def channel_class(kind: str) -> type[Channel]:
    """The class of ``kind``; raise :class:`UnknownChannelKind` for a kind nobody declared."""
    try:
        path = channel_paths()[kind]
    except KeyError:
        known = ", ".join(channel_paths())
        raise UnknownChannelKind(f"Unknown channel kind {kind!r}; known kinds: {known}.") from None
    return _import(path)


@cache
def _import(path: str) -> type[Channel]:
    return import_string(path)


def get_channel(kind: str, target: str) -> Channel:
    """An instance of the channel class of ``kind`` for ``target``."""
    return channel_class(kind)(target)


def mask_target(kind: str, target: str) -> str:
    """``target`` masked by the class of ``kind``: the one way every page shows a target.

    A kind that is unknown or cannot be imported shows nothing of it, since what is secret in
    it cannot be known.
    """
    try:
        return channel_class(kind).mask_target(target)
    except (UnknownChannelKind, ImportError):
        return MASK
