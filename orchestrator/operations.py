"""What operators do to scheduled tasks and runs: one implementation each, called by every edge.

The admin's actions, the dashboard's buttons, the API and the shell (``ScheduledTask.run_now``,
``TaskRun.cancel``) all come here, so an operation means the same wherever it is started from,
and each is recorded in the change history (:mod:`orchestrator.history`) with who did it and
from where: the edges open ``history.changes_by(user, source)`` around the call.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import current_app, uuid
from celery.result import AsyncResult
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from orchestrator import beat_sync, callables, dispatcher, history, rollups
from orchestrator.models import ScheduledTask, TaskRun
from orchestrator.validators import validate_kwargs_object

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnableResult:
    """What :func:`set_enabled` changed."""

    changed: int  # tasks whose flag changed
    unchanged: int  # tasks that already had it
    sync: beat_sync.SyncReport  # what beat_sync did to their beat entries


def set_enabled(tasks: QuerySet[ScheduledTask] | Iterable[int], enabled: bool) -> EnableResult:
    """Enable or disable ``tasks`` (a queryset or primary keys), beat entries included.

    The flags and the django-celery-beat rows change in one transaction, or not at all. Only
    the flag (and ``updated_at`` and ``version``) is written, so an edit made meanwhile on the
    same task is kept. The primary keys are read first: a queryset filtered on ``enabled``
    would match nothing once the update has run.
    """
    pks = list(tasks.values_list("pk", flat=True) if isinstance(tasks, QuerySet) else tasks)
    selected = ScheduledTask.objects.filter(pk__in=pks)
    with transaction.atomic():
        flipping = list(selected.exclude(enabled=enabled).only("pk", "name", "version"))
        changed = ScheduledTask.objects.filter(pk__in=[t.pk for t in flipping]).update(
            enabled=enabled, updated_at=timezone.now(), version=F("version") + 1
        )
        for task in flipping:
            task.enabled = enabled
            task.version += 1
            history.record_change(
                task,
                {"enabled": (not enabled, enabled), "version": (task.version - 1, task.version)},
            )
        report = beat_sync.beat_sync(selected)
    return EnableResult(changed=changed, unchanged=len(pks) - changed, sync=report)


def pause(
    tasks: QuerySet[ScheduledTask] | Iterable[ScheduledTask],
    reason: str,
    until: dt.datetime | None = None,
    user: Any = None,
) -> int:
    """Pause ``tasks`` with one reason (and end); return how many were paused.

    ``ValidationError`` (on ``pause_reason`` or ``paused_until``) before anything changes when
    the reason is empty or the end has passed.
    """
    ScheduledTask.check_pause(reason, until)
    count = 0
    with transaction.atomic():
        for task in tasks:
            task.pause(reason, until=until, user=user)
            count += 1
    return count


def resume(tasks: QuerySet[ScheduledTask] | Iterable[ScheduledTask], user: Any = None) -> int:
    """Resume the paused tasks among ``tasks``; return how many were paused."""
    count = 0
    with transaction.atomic():
        for task in tasks:
            if task.paused:
                task.resume(user=user)
                count += 1
    return count


def resume_expired_pauses(now: dt.datetime | None = None) -> int:
    """Resume the tasks whose pause has ended (``paused_until`` passed), as the system."""
    at = now or timezone.now()
    expired = ScheduledTask.objects.filter(paused=True, paused_until__lte=at)
    count = 0
    for task in expired:
        task.resume(source=history.Source.SYSTEM)
        logger.info("Task %r resumed: its pause ended at %s", task.name, task.paused_until)
        count += 1
    return count


def check_run_kwargs(task: ScheduledTask, kwargs: Any) -> None:
    """Raise ``ValidationError({"kwargs": ...})`` unless ``kwargs`` can replace the task's."""
    try:
        validate_kwargs_object(kwargs)
    except ValidationError as err:
        raise ValidationError({"kwargs": err.messages}) from None
    definition = task.task_definition
    try:
        callables.check_kwargs(definition.resolve(), kwargs)
    except callables.CallableError as err:
        raise ValidationError({"kwargs": f"{err} (for {definition.import_path})"}) from None


def run_now(
    task: ScheduledTask,
    *,
    kwargs: dict[str, Any] | None = None,
    user: Any = None,
    trigger: str = TaskRun.Trigger.MANUAL,
) -> AsyncResult[Any]:
    """Send a run of ``task`` to the workers now, outside its schedule.

    ``kwargs``, when given, replace the task's for this run only, checked against the
    function's signature like the task's own (``ValidationError`` on ``kwargs``). A ``queued``
    run is written first, so the run is in the history, and can be cancelled, before a worker
    takes it. A disabled or paused task is sent too: the worker records the run as skipped,
    which shows the operator what happened.
    """
    if kwargs is not None:
        check_run_kwargs(task, kwargs)
    triggered_by = user if getattr(user, "is_authenticated", False) else None
    celery_id = uuid()
    run = TaskRun.objects.create(
        scheduled_task=task,
        status=TaskRun.Status.QUEUED,
        attempt=1,
        max_attempts=task.max_retries + 1,
        trigger=trigger,
        celery_task_id=celery_id,
        queue=task.queue,
        priority=task.priority,
        time_limit=task.time_limit,
        kwargs_override=kwargs,
        triggered_by=triggered_by,
        task_version=task.version,
    )

    def send() -> None:
        try:
            dispatcher.enqueue(
                task,
                trigger=trigger,
                task_id=celery_id,
                run_id=run.pk,
                kwargs_override=kwargs,
                triggered_by=triggered_by.pk if triggered_by is not None else None,
            )
        except Exception as err:
            fields = {
                "status": TaskRun.Status.LOST,
                "finished_at": timezone.now(),
                "error_type": type(err).__name__,
                "error_message": f"Could not send the run to the broker: {type(err).__name__}",
            }
            dispatcher.lost_from(run, TaskRun.Status.QUEUED, fields)
            raise

    # The worker must find the queued row: send once it is committed.
    transaction.on_commit(send)
    return AsyncResult(celery_id)


def cancel(run: TaskRun, user: Any = None) -> bool:
    """Cancel ``run``; False if it had already finished (nothing changes then).

    * queued: it never starts (the worker finds the row cancelled when the message arrives);
    * running: the worker's pool process is terminated where the pool allows it (prefork),
      and the outcome is discarded in any case (the dispatcher writes it only over a running
      row);
    * a failed attempt whose retry is waiting (``retried``): the retry is dropped, whether it
      waits in the broker or in the database.

    The row records who cancelled it (``cancelled_by``) and says so in its note. Celery is
    also told (``revoke``) so that workers drop the message before it runs; that part is best
    effort, the database decides.
    """
    current = (
        TaskRun.objects.filter(pk=run.pk)
        .values("status", "started_at", "scheduled_task_id", "duration")
        .first()
    )
    if current is None or current["status"] not in TaskRun.CANCELLABLE_STATUSES:
        return False
    status = current["status"]
    who = user.get_username() if getattr(user, "is_authenticated", False) else "the system"
    at = timezone.now()
    values: dict[str, Any] = {
        "status": TaskRun.Status.CANCELLED,
        "cancelled_by": user if getattr(user, "is_authenticated", False) else None,
        "tick_key": None,
    }
    if status == TaskRun.Status.RETRIED:
        values["note"] = f"retry dropped: cancelled by {who}"
    else:
        values["note"] = f"cancelled by {who}"
        values["finished_at"] = at
        values["duration"] = max(at - current["started_at"], dt.timedelta(0))
    counted = TaskRun(
        pk=run.pk,
        scheduled_task_id=current["scheduled_task_id"],
        started_at=current["started_at"],
        duration=values.get("duration", current["duration"]),
        status=TaskRun.Status.CANCELLED,
    )
    with transaction.atomic():
        if not TaskRun.objects.filter(pk=run.pk, status=status).update(**values):
            return False  # it moved on meanwhile (started, finished): cancel again if still wanted
        # A retried attempt was counted as such: it moves to cancelled, with its own duration.
        if status in rollups.COUNTED_STATUSES:
            rollups.move(counted, status)
        else:
            rollups.record(counted)
    if run.celery_task_id:
        _revoke(run.celery_task_id, terminate=status == TaskRun.Status.RUNNING)
    for name, value in values.items():
        setattr(run, name, value)
    logger.info("Run %s (%s) cancelled by %s", run.pk, status, who)
    return True


def _revoke(celery_id: str, *, terminate: bool) -> None:
    try:
        current_app.control.revoke(celery_id, terminate=terminate, signal="SIGTERM")
    except Exception:  # the broker being away must not undo a cancel the database has recorded
        logger.exception("Could not tell the workers that Celery task %s is revoked", celery_id)
