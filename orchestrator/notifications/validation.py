"""Validation of a NotificationChannel, shared by the admin, the API and the shell."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError

from orchestrator.notifications.registry import UnknownChannelKind, channel_class

if TYPE_CHECKING:
    from orchestrator.models import NotificationChannel


def event_names() -> list[str]:
    from orchestrator.models import Event

    return [value for value, _ in Event.choices]


def clean_channel(channel: NotificationChannel) -> None:
    """Raise ValidationError({field: message}) when the channel cannot work."""
    errors: dict[str, list[str]] = {}
    events = channel.events
    known = event_names()
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        errors["events"] = [f"Enter a list of event names among: {', '.join(known)}."]
    elif unknown := sorted(set(events) - set(known)):
        errors["events"] = [
            f"Unknown event(s) {', '.join(unknown)}; choose among: {', '.join(known)}."
        ]
    if channel.kind and channel.target:
        try:
            channel_class(channel.kind).validate_target(channel.target)
        except UnknownChannelKind:
            pass  # the kind field's choices report it
        except ValidationError as err:
            for field, messages in err.message_dict.items():
                errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors)
