"""Periodic upkeep of the run history: the work that no single attempt can do for itself.

:func:`run_maintenance` is one pass; the Celery task ``orchestrator.run_maintenance`` runs it and
beat_sync schedules that task every minute (``ORCHESTRATOR["MAINTENANCE_SCHEDULE"]``). A pass:

* sends the retries that wait in the database (:func:`send_due_retries`): those due later than
  ``MAX_BROKER_COUNTDOWN`` when their attempt failed, which are never sent to the broker at
  once, and those whose broker send failed;
* marks runs still ``running`` long after they should have ended as ``lost`` and alerts them
  (:func:`mark_stuck_runs`);
* re-queues alerts whose broker message was lost, once, and gives up on them after that
  (:func:`requeue_stale_deliveries`);
* resumes the tasks whose pause has ended (:func:`resume_paused_tasks`), and marks manual runs
  still queued long after they were sent as lost (:func:`expire_queued_runs`);
* deletes the history past ``RUN_RETENTION_DAYS`` and ``DELIVERY_RETENTION_DAYS``, for at most
  ``retention.MAINTENANCE_BUDGET`` seconds (:func:`prune_history`, :mod:`orchestrator.retention`).

Every write is a conditional UPDATE that claims its row, so passes running at the same time on
several workers never send a retry or an alert twice. Each part runs on its own: one failing is
logged and does not stop the others.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from orchestrator import dispatcher, operations, retention
from orchestrator.conf import conf
from orchestrator.models import NotificationDelivery, TaskRun
from orchestrator.notifications import delivery as notification_delivery
from orchestrator.notifications.events import (
    RUN_EVENTS,
    TEST_EVENT,
    Event,
    Message,
    connection_test_alert,
)
from orchestrator.routing import message_options, send_task_message
from orchestrator.sanitize import truncate
from orchestrator.task_names import RUN_SCHEDULED_TASK

logger = logging.getLogger(__name__)

# error_type of a run that maintenance found still "running" long after it should have ended.
# It is not one of the dispatcher's "not final" lost kinds: it counts as a final failure.
STUCK = "Stuck"
# A run with a time limit is stuck this long after its limit: the worker kills it at the limit
# and records it within moments, unless the worker itself is gone.
STUCK_GRACE = dt.timedelta(seconds=60)
# Retries waiting in the database are sent this long before they are due, with the rest as a
# countdown, so a pass every minute still starts them on time (capped by MAX_BROKER_COUNTDOWN).
SEND_AHEAD = dt.timedelta(seconds=60)
# A short retry (meant for the broker) whose send was never recorded is sent again only this
# long after it was due: until then its attempt may still be handing it over, or the broker may
# hold it with only the record of the send lost.
RESEND_GRACE = dt.timedelta(minutes=5)
# A pending alert is re-queued this long after it was queued (a delivery retries for a minute at
# most), and given up this long after it was re-queued.
STALE_DELIVERY_AFTER = dt.timedelta(minutes=5)
# An alert still "sending" this long after it was queued had its worker stop mid-send: a send
# itself takes a minute or so at most (ORCHESTRATOR["NOTIFICATION_RETRY"]).
ABANDONED_SEND_AFTER = dt.timedelta(hours=1)
# Rows handled per part in one pass: a backlog is worked off over the next passes.
BATCH_SIZE = 500


@dataclass
class MaintenanceReport:
    """What one pass did."""

    retries_sent: int = 0
    retries_already_run: int = 0
    retries_not_sent: int = 0
    runs_lost: int = 0
    deliveries_requeued: int = 0
    deliveries_failed: int = 0
    tasks_resumed: int = 0
    queued_runs_lost: int = 0
    runs_pruned: int = 0
    deliveries_pruned: int = 0
    alert_states_pruned: int = 0

    @property
    def changed(self) -> bool:
        return any(asdict(self).values())

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return ", ".join(
            f"{name.replace('_', ' ')} {value}" for name, value in asdict(self).items()
        )


def run_maintenance(now: Callable[[], dt.datetime] = timezone.now) -> MaintenanceReport:
    """Run one maintenance pass; return what it did."""
    report = MaintenanceReport()
    parts = (
        send_due_retries,
        mark_stuck_runs,
        requeue_stale_deliveries,
        resume_paused_tasks,
        expire_queued_runs,
        # Last: the parts above may still need the rows it would delete in the same pass.
        prune_history,
    )
    for part in parts:
        try:
            part(report, now=now)
        except Exception:  # one broken part must not keep the others from running
            logger.exception("Maintenance step %s failed", part.__name__)
    return report


# --- retries waiting in the database ----------------------------------------------------------


def due_retries(at: dt.datetime) -> list[TaskRun]:
    """Retried runs whose next attempt is not sent and should be now (oldest due first).

    Each row carries ``followed``: whether the next attempt of the same Celery task already ran
    (its send worked but was not recorded), in which case it must not be sent again.
    """
    limit = conf.MAX_BROKER_COUNTDOWN
    # Held on purpose: due later than the broker may hold a message when its attempt failed.
    held = Q(next_retry_at__gt=F("finished_at") + dt.timedelta(seconds=limit))
    ahead = min(SEND_AHEAD, dt.timedelta(seconds=max(limit, 0)))
    later_attempt = TaskRun.objects.filter(
        scheduled_task=OuterRef("scheduled_task"),
        celery_task_id=OuterRef("celery_task_id"),
        attempt__gt=OuterRef("attempt"),
    ).exclude(celery_task_id="")
    return list(
        TaskRun.objects.filter(
            status=TaskRun.Status.RETRIED,
            retry_sent_at__isnull=True,
            next_retry_at__isnull=False,
            finished_at__isnull=False,
        )
        .filter(
            (held & Q(next_retry_at__lte=at + ahead))
            | (~held & Q(next_retry_at__lte=at - RESEND_GRACE))
        )
        .annotate(followed=Exists(later_attempt))
        .select_related("scheduled_task")
        .order_by("next_retry_at", "pk")[:BATCH_SIZE]
    )


def claim_retry(run: TaskRun, at: dt.datetime) -> bool:
    """Mark the retry after ``run`` as sent at ``at``; False if another pass got there first."""
    return (
        TaskRun.objects.filter(pk=run.pk, retry_sent_at__isnull=True).update(retry_sent_at=at) == 1
    )


def send_retry(run: TaskRun, at: dt.datetime) -> None:
    """Send the attempt that follows the retried ``run``, due at ``run.next_retry_at``.

    The message is the one the attempt's own ``self.retry()`` would have sent: same Celery task
    id, Celery retry count equal to the attempt just made (so the next one is numbered after
    it), the trigger and schedule tick carried as kwargs (the tick keeps the one-run-per-tick
    guard), and the queue, priority, expiry and time limit of the task as it is now.
    """
    task = run.scheduled_task
    assert run.next_retry_at is not None  # due_retries selects only rows that have one
    countdown = max((run.next_retry_at - at).total_seconds(), 0.0)
    kwargs = dispatcher.message_kwargs(
        run.trigger, run.scheduled_for, None, run.kwargs_override, run.triggered_by_id
    )
    send_task_message(
        RUN_SCHEDULED_TASK,
        args=[task.pk],
        kwargs=kwargs,
        task_id=run.celery_task_id or None,
        retries=run.attempt,
        countdown=countdown,
        **message_options(task, countdown),
    )


def send_due_retries(
    report: MaintenanceReport | None = None, *, now: Callable[[], dt.datetime] = timezone.now
) -> MaintenanceReport:
    """Send every due retry that waits in the database; each is claimed first, so it goes once.

    A send that fails releases the claim, and the next pass tries again.
    """
    report = report if report is not None else MaintenanceReport()
    at = now()
    for run in due_retries(at):
        if not claim_retry(run, at):
            continue
        if run.followed:  # type: ignore[attr-defined]
            # The claim alone settles it: the next attempt exists, so its message did go.
            report.retries_already_run += 1
            continue
        try:
            send_retry(run, at)
        except Exception:
            logger.exception(
                "Could not send the retry of task %r after attempt %s; trying again next pass",
                run.scheduled_task.name,
                run.attempt,
            )
            TaskRun.objects.filter(pk=run.pk, retry_sent_at=at).update(retry_sent_at=None)
            report.retries_not_sent += 1
            continue
        logger.info(
            "Sent the retry of task %r (attempt %s), due at %s",
            run.scheduled_task.name,
            run.attempt + 1,
            run.next_retry_at.isoformat() if run.next_retry_at else "-",
        )
        report.retries_sent += 1
    return report


# --- stuck runs -------------------------------------------------------------------------------


def _stuck_reason(run: TaskRun, at: dt.datetime) -> str | None:
    """Why ``run``, still ``running`` at ``at``, is stuck; None if it may still be running."""
    elapsed = at - run.started_at
    # The limit in force when the attempt started: lowering it later must not call a run that
    # is within its own limit stuck.
    limit = run.time_limit
    if limit:
        if elapsed <= dt.timedelta(seconds=limit) + STUCK_GRACE:
            return None
        return (
            f"Still marked running {int(elapsed.total_seconds())} s after it started, past its "
            f"time limit of {limit} s: its worker died or stopped without recording the attempt."
        )
    timeout = conf.STUCK_RUN_TIMEOUT
    if timeout is None or elapsed <= dt.timedelta(seconds=timeout):
        return None
    return (
        f"Still marked running {int(elapsed.total_seconds())} s after it started, longer than "
        f"ORCHESTRATOR['STUCK_RUN_TIMEOUT'] ({timeout} s) for a task without a time limit: "
        "its worker most likely died without recording the attempt."
    )


def mark_stuck_runs(
    report: MaintenanceReport | None = None, *, now: Callable[[], dt.datetime] = timezone.now
) -> MaintenanceReport:
    """Mark ``running`` rows that outlived their time limit (or STUCK_RUN_TIMEOUT) as ``lost``.

    Each is a final failure: ``task_failed`` is sent for it, so the notifications alert it. The
    UPDATE is conditional on the row still running, so an attempt that finishes meanwhile, or
    another pass, is never overwritten or alerted twice.
    """
    report = report if report is not None else MaintenanceReport()
    at = now()
    candidates = Q(time_limit__isnull=False)
    timeout = conf.STUCK_RUN_TIMEOUT
    if timeout is not None:
        candidates |= Q(started_at__lt=at - dt.timedelta(seconds=timeout))
    running = (
        TaskRun.objects.filter(status=TaskRun.Status.RUNNING, started_at__lt=at - STUCK_GRACE)
        .filter(candidates)
        .select_related("scheduled_task__task_definition")
        .order_by("started_at", "pk")[:BATCH_SIZE]
    )
    for run in running:
        reason = _stuck_reason(run, at)
        if reason is None:
            continue
        fields = {
            "status": TaskRun.Status.LOST,
            "finished_at": at,
            "duration": max(at - run.started_at, dt.timedelta(0)),
            "error_type": STUCK,
            "error_message": truncate(reason, conf.MAX_ERROR_CHARS),
            "tick_key": None,
        }
        if not dispatcher.lost_from(run, TaskRun.Status.RUNNING, fields):
            continue
        task = run.scheduled_task
        logger.error("Task %r attempt %s is stuck, marked lost: %s", task.name, run.attempt, reason)
        dispatcher.report_final_failure(run, task)
        report.runs_lost += 1
    return report


# --- alerts whose broker message was lost ----------------------------------------------------


def _message_for(row: NotificationDelivery) -> Message | None:
    """The alert ``row`` was queued with, built again from its run; None if it cannot be."""
    if row.event == TEST_EVENT:
        return connection_test_alert()
    run = row.task_run
    if run is None or row.event not in RUN_EVENTS:
        return None  # a report, or a run deleted since: there is nothing to describe
    alert = notification_delivery.alert_from_run(row.event, run)
    if row.event == Event.RECOVERY:
        return alert
    in_a_row = 1
    if row.event == Event.FAILURE and row.channel.alert_after_failures > 1:
        in_a_row = notification_delivery.consecutive_failures(run.scheduled_task)
    return alert.with_counts(row.suppressed_count, in_a_row)


def _give_up(row: NotificationDelivery, at: dt.datetime, reason: str) -> bool:
    """Mark ``row`` failed, unless another pass or a worker changed it since it was read."""
    pending = NotificationDelivery.objects.filter(
        pk=row.pk, status=NotificationDelivery.Status.PENDING, requeued_at=row.requeued_at
    )
    return notification_delivery.fail_delivery(pending, error=reason, finished_at=at) == 1


def requeue_stale_deliveries(
    report: MaintenanceReport | None = None, *, now: Callable[[], dt.datetime] = timezone.now
) -> MaintenanceReport:
    """Re-queue alerts still ``pending`` after STALE_DELIVERY_AFTER, once; then give up.

    A delivery stays pending only if its broker message never reached a worker (a delivery
    itself retries for a minute at most), or while a server's ``Retry-After`` holds it back
    (``retry_at``, counted from then). It is re-queued through the notification service's
    own ``enqueue``, with the alert built again from its run, and ``requeued_at`` says when.
    Still pending STALE_DELIVERY_AFTER after that, or impossible to rebuild (a report,
    or its run deleted), it is marked ``failed`` with the reason, so the delivery log never shows
    an alert as on its way forever.
    """
    report = report if report is not None else MaintenanceReport()
    at = now()
    abandoned = notification_delivery.fail_delivery(
        NotificationDelivery.objects.filter(
            status=NotificationDelivery.Status.SENDING, created_at__lte=at - ABANDONED_SEND_AFTER
        ),
        finished_at=at,
        error="Not known to be delivered: the worker sending it stopped before it finished.",
    )
    if abandoned:
        logger.error("%s notification deliveries were abandoned mid-send", abandoned)
        report.deliveries_failed += abandoned
    stale = (
        NotificationDelivery.objects.filter(
            status=NotificationDelivery.Status.PENDING, created_at__lte=at - STALE_DELIVERY_AFTER
        )
        # A rate-limited delivery waits for its retry_at with a message in the broker: it is
        # stale only once that time is well past with no worker having sent it.
        .filter(Q(retry_at__isnull=True) | Q(retry_at__lte=at - STALE_DELIVERY_AFTER))
        .select_related("channel", "task_run__scheduled_task__task_definition")
        .order_by("created_at", "pk")[:BATCH_SIZE]
    )
    minutes = int(STALE_DELIVERY_AFTER.total_seconds() // 60)
    for row in stale:
        requeued = row.requeued_at
        if requeued is not None:
            if at - requeued < STALE_DELIVERY_AFTER:
                continue
            reason = (
                f"Not delivered: its broker message was lost, and so was the one re-queued at "
                f"{requeued.isoformat()} ({minutes} min without a worker sending it)."
            )
            if _give_up(row, at, reason):
                logger.error("Notification delivery %s given up: %s", row.pk, reason)
                report.deliveries_failed += 1
            continue
        message = _message_for(row)
        if message is None:
            reason = (
                f"Not delivered: no worker sent it within {minutes} min (its broker message was "
                "lost), and it cannot be queued again (its run is gone, or it is a report)."
            )
            if _give_up(row, at, reason):
                logger.error("Notification delivery %s given up: %s", row.pk, reason)
                report.deliveries_failed += 1
            continue
        claimed = NotificationDelivery.objects.filter(
            pk=row.pk, status=NotificationDelivery.Status.PENDING, requeued_at__isnull=True
        ).update(requeued_at=at)
        if not claimed:
            continue
        notification_delivery.enqueue(row.pk, message)
        logger.warning("Notification delivery %s was still pending; re-queued it", row.pk)
        report.deliveries_requeued += 1
    return report


# --- pauses that ended, runs that never started ------------------------------------------------


def resume_paused_tasks(
    report: MaintenanceReport | None = None, *, now: Callable[[], dt.datetime] = timezone.now
) -> MaintenanceReport:
    """Resume the tasks whose ``paused_until`` has passed, as the system (in their history).

    The dispatcher already runs them from that moment; this makes the task say so everywhere.
    """
    report = report if report is not None else MaintenanceReport()
    report.tasks_resumed += operations.resume_expired_pauses(now())
    return report


# A queued manual run whose message no worker took for this long was lost (or expired in the
# broker without a worker seeing it): nothing will start it.
QUEUED_TOO_LONG = dt.timedelta(hours=6)


def expire_queued_runs(
    report: MaintenanceReport | None = None, *, now: Callable[[], dt.datetime] = timezone.now
) -> MaintenanceReport:
    """Mark runs still ``queued`` long after they were sent (or after their task's expiry) as
    ``lost``, saying so; a worker that takes the message later finds it no longer queued."""
    report = report if report is not None else MaintenanceReport()
    at = now()
    stale = TaskRun.objects.filter(
        status=TaskRun.Status.QUEUED, started_at__lt=at - QUEUED_TOO_LONG
    ).order_by("started_at", "pk")[:BATCH_SIZE]
    hours = int(QUEUED_TOO_LONG.total_seconds() // 3600)
    for run in stale:
        message = (
            f"Never started: no worker took this run within {hours} h of it being sent (its "
            "broker message was lost, or it expired unseen)."
        )
        fields = {
            "status": TaskRun.Status.LOST,
            "finished_at": at,
            "error_type": "NeverStarted",
            "error_message": message,
        }
        if dispatcher.lost_from(run, TaskRun.Status.QUEUED, fields):
            logger.warning(
                "Run %s of task %s was still queued; marked lost", run.pk, run.scheduled_task_id
            )
            report.queued_runs_lost += 1
    return report


# --- history past its retention --------------------------------------------------------------


def prune_history(
    report: MaintenanceReport | None = None, *, now: Callable[[], dt.datetime] = timezone.now
) -> MaintenanceReport:
    """Delete the runs, deliveries and alert state past their retention, in short batches, for
    at most ``retention.MAINTENANCE_BUDGET`` seconds: a backlog is worked off over the next
    passes (see :func:`orchestrator.retention.prune`)."""
    report = report if report is not None else MaintenanceReport()
    pruned = retention.prune(now=now(), budget=retention.MAINTENANCE_BUDGET)
    report.runs_pruned += pruned.runs
    report.deliveries_pruned += pruned.deliveries
    report.alert_states_pruned += pruned.alert_states
    return report
