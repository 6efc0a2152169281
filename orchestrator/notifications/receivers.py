"""Connect the dispatcher's signals to the notification service.

Receivers must never raise into the dispatcher and must stay cheap: they write a few rows and
queue Celery messages; the network is only used by the delivery task.
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator import signals
from orchestrator.models import Event, TaskRun

logger = logging.getLogger(__name__)


def _notify(event: str, run: TaskRun | None) -> None:
    if run is None:
        return
    from orchestrator.notifications.delivery import notify_run

    try:
        notify_run(event, run)
    except Exception:
        # The run's outcome is already recorded; a broken alert path must not change it.
        logger.exception("Could not process %s notifications for run %s", event, run.pk)


def on_retrying(sender: Any, run: TaskRun | None = None, **kwargs: Any) -> None:
    _notify(Event.RETRY, run)


def on_failed(sender: Any, run: TaskRun | None = None, **kwargs: Any) -> None:
    _notify(Event.FAILURE, run)


# Final statuses after which a success may owe a recovery alert.
_FAILED_FINAL = (TaskRun.Status.FAILED, TaskRun.Status.LOST)


def on_recovered(sender: Any, run: TaskRun | None = None, **kwargs: Any) -> None:
    # Connected to task_succeeded too: a recovery is owed whenever a success follows an
    # alerted final failure, whatever the dispatcher considers "recovered"; the stored
    # awaiting_recovery flag makes the second call a no-op.
    task = kwargs.get("scheduled_task")
    previous = getattr(task, "previous_final_status", _FAILED_FINAL[0])
    if previous not in _FAILED_FINAL:
        # The dispatcher loaded the status of the last final run with the task: when it was a
        # success no failure alert can be waiting, and the common success costs no query here.
        return
    _notify(Event.RECOVERY, run)


def connect() -> None:
    """Connect the receivers (idempotent: each has a dispatch_uid)."""
    signals.task_retrying.connect(on_retrying, dispatch_uid="orchestrator.notify.retrying")
    signals.task_failed.connect(on_failed, dispatch_uid="orchestrator.notify.failed")
    signals.task_recovered.connect(on_recovered, dispatch_uid="orchestrator.notify.recovered")
    signals.task_succeeded.connect(on_recovered, dispatch_uid="orchestrator.notify.succeeded")
