"""Validation of a notification channel's fields, shared by the admin, the API and the shell.

It works on plain values, not on the model: ``NotificationChannel.clean()`` calls it, so the
model depends on this module and never the other way round.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from orchestrator.notifications.events import Event
from orchestrator.notifications.registry import UnknownChannelKind, channel_class


def event_names() -> list[str]:
    return [value for value, _ in Event.choices]


def clean_channel(kind: str, target: str, events: Any) -> None:
    """Raise ``ValidationError({field: messages})`` when a channel with these values cannot work."""
    errors: dict[str, list[str]] = {}
    known = event_names()
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        errors["events"] = [f"Enter a list of event names among: {', '.join(known)}."]
    elif unknown := sorted(set(events) - set(known)):
        errors["events"] = [
            f"Unknown event(s) {', '.join(unknown)}; choose among: {', '.join(known)}."
        ]
    if kind and target:
        try:
            channel_class(kind).validate_target(target)
        except UnknownChannelKind:
            pass  # the kind field's choices report it
        except ValidationError as err:
            for field, messages in err.message_dict.items():
                errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors)
