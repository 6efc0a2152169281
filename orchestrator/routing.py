"""How orchestrator's routing fields become Celery messages for the configured broker."""

from __future__ import annotations

from typing import Any, Protocol

from celery import current_app
from celery.result import AsyncResult

from orchestrator.conf import conf
from orchestrator.policies.priority import to_broker_priority, transport_of


class Routed(Protocol):
    """What routing reads of a scheduled task (a ``ScheduledTask`` is one)."""

    queue: str
    priority: int | None
    expires: int | None
    time_limit: int | None


def broker_transport() -> str:
    """The broker transport in use: ORCHESTRATOR["BROKER_TRANSPORT"] or Celery's broker_url."""
    if conf.BROKER_TRANSPORT:
        return conf.BROKER_TRANSPORT
    return transport_of(current_app.conf.broker_url)


def native_priority(priority: int | None) -> int | None:
    """``priority`` (0-9, 9 = most urgent) in the broker's own direction."""
    return to_broker_priority(priority, broker_transport())


def message_options(task: Routed, countdown: float = 0.0) -> dict[str, Any]:
    """The ``apply_async`` options of a run of ``task`` sent ``countdown`` seconds from now.

    ``expires`` counts from when the run is due, not from when it is sent, so a retry waiting
    longer than ``task.expires`` is not discarded before it could start. ``queue`` is None for
    the default routing; the Celery task's retry makes it explicit. A task without a priority
    gets the project's ``task_default_priority``, as beat's messages do: an explicit None would
    override it (and kombu's Redis transport reads a missing priority as its most urgent).
    """
    priority = native_priority(task.priority)
    return {
        "queue": task.queue or None,
        "priority": current_app.conf.task_default_priority if priority is None else priority,
        "expires": countdown + task.expires if task.expires else None,
        "time_limit": task.time_limit,
    }


def send_task_message(name: str, **options: Any) -> AsyncResult:
    """Send a message to orchestrator's Celery task ``name`` (see :mod:`orchestrator.task_names`).

    Through the task object when the app has it registered, so ``task_always_eager`` and task
    annotations apply as for any ``apply_async``; by name otherwise. Services send this way
    rather than importing the task modules, which are edges.
    """
    task = current_app.tasks.get(name)
    if task is not None:
        return task.apply_async(**options)
    return current_app.send_task(name, **options)
