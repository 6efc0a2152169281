"""The change history: who changed a definition, a scheduled task or a channel, from where, and
what changed.

Backed by django-auditlog (one ``LogEntry`` per create, change or delete, with the changed fields
as JSON). Its model signals record every ``save()`` and ``delete()``; writes that bypass them
(``QuerySet.update()`` in :mod:`orchestrator.operations`) call :func:`record_change`. Each entry
carries its ``source`` (admin, api, dashboard, system, shell) from the context every edge opens
with :func:`changes_by`; code that opens none (a shell, a script, a data migration) is ``shell``.
Secret values (webhook URLs, kwargs whose names look secret) are masked before they are stored.
"""

from __future__ import annotations

import contextlib
import enum
import json
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model, QuerySet

if not apps.is_installed("auditlog"):
    # Say what to do, rather than the RuntimeError importing its models would raise.
    raise ImproperlyConfigured(
        "orchestrator records its change history with django-auditlog: add 'auditlog' to "
        "INSTALLED_APPS (before 'orchestrator')."
    )

from auditlog.context import set_actor
from auditlog.models import LogEntry
from auditlog.registry import auditlog

from orchestrator.notifications.redact import is_url, mask_url
from orchestrator.sanitize import SECRET_MASK, mask_secret_values


class Source(enum.StrEnum):
    """Where a change came from."""

    ADMIN = "admin"
    API = "api"
    DASHBOARD = "dashboard"
    SYSTEM = "system"  # orchestrator itself: the circuit breaker, an automatic resume
    SHELL = "shell"  # anything else: a shell, a script, a management command


_source: ContextVar[str] = ContextVar("orchestrator_change_source", default=Source.SHELL)


@contextlib.contextmanager
def changes_by(user: Any, source: str) -> Iterator[None]:
    """Record the changes made inside as made by ``user`` (None for nobody) from ``source``."""
    token = _source.set(str(source))
    try:
        if user is not None and getattr(user, "is_authenticated", False):
            with set_actor(user):
                yield
        else:
            yield
    finally:
        _source.reset(token)


def current_source() -> str:
    return _source.get()


def additional_data() -> dict[str, str]:
    """What each entry stores besides the changes (models return it from
    ``get_additional_data()``, which django-auditlog calls)."""
    return {"source": current_source()}


def mask_target(value: str) -> str:
    """A channel target in the history: a URL carries its credential, so it is masked."""
    return mask_url(value) if is_url(value) else value


def mask_kwargs(value: str) -> str:
    """Task kwargs in the history: the values of arguments whose names look secret are masked."""
    try:
        data = json.loads(value)
    except (TypeError, ValueError, RecursionError):
        return SECRET_MASK
    return json.dumps(mask_secret_values(data), sort_keys=True)


def register(definition: type[Model], task: type[Model], channel: type[Model]) -> None:
    """Have django-auditlog record the three kinds of rows operators edit."""
    untracked = ["created_at", "updated_at"]
    auditlog.register(definition, exclude_fields=untracked)
    auditlog.register(
        task,
        exclude_fields=[*untracked, "periodic_task"],  # beat_sync's link, not an operator's edit
        mask_fields=["kwargs"],
        mask_callable="orchestrator.history.mask_kwargs",
        m2m_fields={"notification_channels"},
    )
    auditlog.register(
        channel,
        exclude_fields=[*untracked, "last_error", "last_error_at"],  # written by deliveries
        mask_fields=["target"],
        mask_callable="orchestrator.history.mask_target",
    )


def record_change(
    instance: Model, changes: dict[str, tuple[Any, Any]], user: Any = None, source: str = ""
) -> LogEntry | None:
    """Record a change written around the model signals (a ``QuerySet.update()``)."""
    with changes_by(user, source) if source else contextlib.nullcontext():
        return LogEntry.objects.log_create(
            instance,
            force_log=True,
            action=LogEntry.Action.UPDATE,
            changes={name: [_text(old), _text(new)] for name, (old, new) in changes.items()},
        )


def _text(value: Any) -> str:
    return "None" if value is None else str(value)


def entries_for(instance: Model) -> QuerySet[LogEntry]:
    """The history of ``instance``, newest first."""
    return (
        LogEntry.objects.get_for_object(instance).select_related("actor").order_by("-timestamp")
    )


def describe(entry: LogEntry) -> dict[str, Any]:
    """One entry as the API and the dashboard show it."""
    data = entry.additional_data if isinstance(entry.additional_data, dict) else {}
    source = data.get("source", Source.SHELL)
    if entry.actor is not None:
        changed_by = entry.actor.get_username()
    else:
        changed_by = "system" if source == Source.SYSTEM else ""
    return {
        "changed_at": entry.timestamp,
        "changed_by": changed_by,
        "source": source,
        "action": {0: "create", 1: "update", 2: "delete"}.get(entry.action, str(entry.action)),
        "changes": {name: _pair(value) for name, value in (entry.changes_dict or {}).items()},
    }


def _pair(value: Any) -> list[Any]:
    """A change as ``[old, new]``; a many-to-many change (which django-auditlog records as the
    objects added or removed) as ``[None, "add: a, b"]``."""
    if isinstance(value, dict) and value.get("type") == "m2m":
        objects = ", ".join(str(name) for name in value.get("objects", []))
        return [None, f"{value.get('operation', 'change')}: {objects}"]
    if isinstance(value, list | tuple) and len(value) == 2:
        return list(value)
    return [None, value]
