"""The Celery side of the dispatcher: one task, and the worker signals for killed attempts.

``run_scheduled_task`` is what beat (through django-celery-beat's ``PeriodicTask`` rows, args
``[scheduled_task_id]``) and :func:`orchestrator.dispatcher.enqueue` send. It only adapts the
Celery request to :func:`orchestrator.dispatcher.run_task` and turns a retry outcome into
``self.retry()`` with every option explicit.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Ignore, TimeLimitExceeded
from celery.signals import task_failure, task_revoked
from django.db import close_old_connections, connection
from django.utils import timezone

from orchestrator import dispatcher, signals
from orchestrator.conf import conf
from orchestrator.dispatcher import TASK_NAME, Action
from orchestrator.models import ScheduledTask, TaskRun

# Celery's autodiscovery imports only this module of the app: importing the notification
# delivery task here is what registers it with the workers.
from orchestrator.notifications.tasks import deliver_notification  # noqa: F401

logger = logging.getLogger(__name__)


@shared_task(bind=True, name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def run_scheduled_task(
    self: Task,
    scheduled_task_id: int,
    trigger: str = TaskRun.Trigger.SCHEDULE,
    not_before: str | None = None,
    scheduled_for: str | None = None,
) -> dict[str, Any] | None:
    """Run one attempt of a scheduled task; retry it through the broker when its policy says so.

    The attempt number is Celery's retry count plus one. A retry is a new broker message (the
    worker slot is free while it waits), sent with the countdown, ``max_retries``, queue,
    priority, expiry and time limit taken from the task as loaded for this attempt: Celery would
    otherwise fall back to its own defaults or the wrong queue (celery#8357).

    A retry due later than ``ORCHESTRATOR["MAX_BROKER_COUNTDOWN"]`` waits in hops: the message
    carries ``not_before`` (an ISO 8601 time) and, arriving early, sends itself on again without
    running, because an ETA message held longer than Redis' ``visibility_timeout`` is delivered
    twice and RabbitMQ closes the channel after ``consumer_timeout``.

    ``scheduled_for`` (ISO 8601) is the schedule tick of the first attempt, carried by retries;
    beat's own messages have none and the dispatcher works it out (see ``run_task``).
    """
    request = self.request
    carried: dict[str, Any] = {"trigger": trigger}
    if scheduled_for:
        carried["scheduled_for"] = scheduled_for
    if not_before:
        _wait_until_due(self, scheduled_task_id, {**carried, "not_before": not_before})
    delivery = request.delivery_info or {}
    outcome = dispatcher.run_task(
        scheduled_task_id,
        trigger=trigger,
        attempt=request.retries + 1,
        celery_task_id=request.id or "",
        worker=request.hostname or "",
        queue=delivery.get("routing_key") or "",
        redelivered=bool(delivery.get("redelivered")),
        scheduled_for=dt.datetime.fromisoformat(scheduled_for) if scheduled_for else None,
        from_beat=_sent_by_beat(request),
    )
    if outcome.action is Action.RETRY:
        task = outcome.scheduled_task
        assert task is not None and outcome.run is not None  # a retry outcome carries both
        kwargs = dict(carried)
        if outcome.run.scheduled_for is not None:
            kwargs["scheduled_for"] = outcome.run.scheduled_for.isoformat()
        countdown = outcome.countdown
        if countdown > conf.MAX_BROKER_COUNTDOWN and outcome.run.next_retry_at is not None:
            kwargs["not_before"] = outcome.run.next_retry_at.isoformat()
            countdown = float(conf.MAX_BROKER_COUNTDOWN)
        options = dispatcher.message_options(task, outcome.countdown)
        options["queue"] = options["queue"] or _default_queue(self)
        # throw=False: the retry message is sent (or Reject raised) before we get it back, so
        # retry_sent_at says the broker has it; a retried row without it was never handed over.
        retry = self.retry(
            args=[scheduled_task_id],
            kwargs=kwargs,
            countdown=countdown,
            max_retries=outcome.max_retries,
            throw=False,
            **options,
        )
        dispatcher.mark_retry_sent(outcome.run)
        raise retry
    if outcome.run is None:
        return None
    return {"run": outcome.run.pk, "status": outcome.run.status, "attempt": outcome.run.attempt}


def _wait_until_due(self: Task, scheduled_task_id: int, kwargs: dict[str, Any]) -> None:
    """Return if ``kwargs["not_before"]`` has come; otherwise send this message on, stop here.

    The next hop keeps the Celery task id and retry count, so the attempt it finally runs is
    numbered as the retry it is. Stopping raises Ignore: the message is acknowledged and
    nothing is recorded. A scheduled task that is gone returns at once, for run_task to drop.
    """
    not_before = kwargs["not_before"]
    remaining = (dt.datetime.fromisoformat(not_before) - timezone.now()).total_seconds()
    if remaining <= 0:
        return
    task = ScheduledTask.objects.filter(pk=scheduled_task_id).first()
    if task is None:
        return
    options = dispatcher.message_options(task, remaining)
    options["queue"] = options["queue"] or _default_queue(self)
    self.apply_async(
        args=[scheduled_task_id],
        kwargs=kwargs,
        task_id=self.request.id,
        retries=self.request.retries,
        countdown=min(remaining, float(conf.MAX_BROKER_COUNTDOWN)),
        **options,
    )
    logger.info(
        "Retry of task %r not due before %s; waiting %.0f s more", task.name, not_before, remaining
    )
    raise Ignore()


def _sent_by_beat(request: Any) -> bool:
    """Whether django-celery-beat sent this message (its ModelEntry adds this header)."""
    headers = getattr(request, "headers", None) or {}
    return bool(getattr(request, "periodic_task_name", None) or headers.get("periodic_task_name"))


def _default_queue(task: Task) -> str:
    """The queue Celery's router picks for this task (task_routes, else the default queue)."""
    route = task.app.amqp.router.route({}, task.name)
    queue = route.get("queue")
    return getattr(queue, "name", None) or str(task.app.conf.task_default_queue)


def _record_lost(task_id: str, message: str, error_type: str, *, final: bool) -> None:
    # The worker's main process seldom touches the database: its connection may have been
    # closed by the server since, which Django only notices here. A connection inside a
    # transaction belongs to the caller (an in-process test) and is left alone.
    if not connection.in_atomic_block:
        close_old_connections()
    runs = dispatcher.mark_lost(task_id, message, error_type=error_type)
    if not final:
        return
    for run in runs:
        task = ScheduledTask.objects.select_related("task_definition").get(pk=run.scheduled_task_id)
        logger.error("Task %r attempt %s lost: %s", task.name, run.attempt, message)
        # Nothing will retry this attempt, so it is a final failure as far as alerts go.
        dispatcher.send_signal(signals.task_failed, run, task)


@task_failure.connect
def _on_task_failure(
    sender: Task | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    **kwargs: Any,
) -> None:
    """A failure that escaped the task body: the worker killed the attempt, or our code broke.

    Runs in the worker's main process for a hard time limit, where the task body never got to
    record the outcome.
    """
    if getattr(sender, "name", None) != TASK_NAME or not task_id:
        return
    if isinstance(exception, TimeLimitExceeded):
        message = f"Killed by the worker at its hard time limit ({exception})."
    else:
        message = f"The attempt ended outside the dispatcher: {exception!r}"
    try:
        _record_lost(task_id, message, type(exception).__name__, final=True)
    except Exception:  # a worker signal handler must never take the worker down
        logger.exception("Could not record the lost attempt of Celery task %s", task_id)


@task_revoked.connect
def _on_task_revoked(
    sender: Task | None = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **kwargs: Any,
) -> None:
    """A revoked attempt that had started (``terminate=True``) leaves a ``running`` row.

    An operator stopped it on purpose, so the row is marked ``lost`` without a failure signal.
    """
    task_id = getattr(request, "id", None)
    if getattr(sender, "name", None) != TASK_NAME or not task_id or not terminated:
        return
    try:
        message = f"Revoked and terminated (signal {signum})."
        _record_lost(task_id, message, dispatcher.REVOKED, final=False)
    except Exception:
        logger.exception("Could not record the revoked attempt of Celery task %s", task_id)
