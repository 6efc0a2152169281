"""Connect the dispatcher's signals to the notification service.

Receivers must never raise into the dispatcher and must stay cheap: they write a few rows and
queue Celery messages; the network is only used by the delivery task.
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator import signals
from orchestrator.models import TaskRun
from orchestrator.notifications import delivery
from orchestrator.notifications.events import Event

logger = logging.getLogger(__name__)


def _notify(event: str, run: TaskRun | None) -> None:
    if run is None:
        return
    try:
        delivery.notify_run(event, run)
    except Exception:
        # The run's outcome is already recorded; a broken alert path must not change it.
        logger.exception("Could not process %s notifications for run %s", event, run.pk)


def on_retrying(sender: Any, run: TaskRun | None = None, **kwargs: Any) -> None:
    _notify(Event.RETRY, run)


def on_failed(sender: Any, run: TaskRun | None = None, **kwargs: Any) -> None:
    _notify(Event.FAILURE, run)


def on_recovered(sender: Any, run: TaskRun | None = None, **kwargs: Any) -> None:
    # task_recovered is sent for the first success after a final failure (the dispatcher reads
    # the last final status with the task); the alert states say which channels were paged.
    _notify(Event.RECOVERY, run)


def on_paused(sender: Any, run: TaskRun | None = None, **kwargs: Any) -> None:
    if run is None:
        return
    task = kwargs.get("scheduled_task")
    try:
        delivery.notify_run(Event.PAUSED, run, note=getattr(task, "pause_reason", ""))
    except Exception:
        logger.exception("Could not process paused notifications for run %s", run.pk)


def on_missed(sender: Any, run: TaskRun | None = None, **kwargs: Any) -> None:
    _notify(Event.MISSED, run)


def connect() -> None:
    """Connect the receivers (idempotent: each has a dispatch_uid)."""
    signals.task_retrying.connect(on_retrying, dispatch_uid="orchestrator.notify.retrying")
    signals.task_failed.connect(on_failed, dispatch_uid="orchestrator.notify.failed")
    signals.task_recovered.connect(on_recovered, dispatch_uid="orchestrator.notify.recovered")
    signals.task_paused.connect(on_paused, dispatch_uid="orchestrator.notify.paused")
    signals.task_missed.connect(on_missed, dispatch_uid="orchestrator.notify.missed")
