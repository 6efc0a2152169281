"""The Celery side of the dispatcher: its task, the maintenance task, and the worker signals.

``run_scheduled_task`` is what beat (through django-celery-beat's ``PeriodicTask`` rows, args
``[scheduled_task_id]``) and :func:`orchestrator.dispatcher.enqueue` send. It only adapts the
Celery request to :func:`orchestrator.dispatcher.run_task` and turns a retry outcome into
``self.retry()`` with every option explicit.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, NoReturn

from celery import Task, shared_task
from celery.exceptions import Ignore, Reject, TimeLimitExceeded
from celery.signals import task_failure, task_revoked
from django.db import close_old_connections, connection

# Celery's autodiscovery imports only this module of the app: importing the notification
# delivery task here is what registers it with the workers, and importing the worker module
# adds the watchdog's bootstep to them.
from orchestrator import (
    dispatcher,
    maintenance,
    worker,  # noqa: F401
)
from orchestrator.conf import conf
from orchestrator.dispatcher import Action, Attempt
from orchestrator.models import ScheduledTask, TaskRun
from orchestrator.notifications.tasks import deliver_notification  # noqa: F401
from orchestrator.routing import message_options
from orchestrator.task_names import RUN_MAINTENANCE, RUN_SCHEDULED_TASK

logger = logging.getLogger(__name__)

# A run whose message arrived while the database was unreachable is sent again this many
# seconds later (after the dispatcher's own reconnect tries, about 7.5 s), until it can start.
DATABASE_REQUEUE_COUNTDOWN = 10.0
# Marks the copy sent again that way: the worker treats it as delivered again.
REQUEUED_HEADER = "orchestrator_requeued"


@shared_task(bind=True, name=RUN_SCHEDULED_TASK, acks_late=True, reject_on_worker_lost=True)
def run_scheduled_task(
    self: Task,
    scheduled_task_id: int,
    trigger: str = TaskRun.Trigger.SCHEDULE,
    scheduled_for: str | None = None,
    run_id: int | None = None,
    kwargs_override: dict[str, Any] | None = None,
    triggered_by: int | None = None,
) -> dict[str, Any] | None:
    """Run one attempt of a scheduled task; retry it through the broker when its policy says so.

    The attempt number is Celery's retry count plus one. A retry is a new broker message (the
    worker slot is free while it waits), sent with the countdown, ``max_retries``, queue,
    priority, expiry and time limit taken from the task as loaded for this attempt: Celery would
    otherwise fall back to its own defaults or the wrong queue (celery#8357).

    A retry due later than ``ORCHESTRATOR["MAX_BROKER_COUNTDOWN"]`` is not sent at all: its
    ``retried`` row (``next_retry_at`` set, ``retry_sent_at`` empty) is the retry, and the
    maintenance task (:mod:`orchestrator.maintenance`) sends it when it is due, because an ETA
    message held longer than Redis' ``visibility_timeout`` is delivered twice and RabbitMQ
    closes the channel after ``consumer_timeout``.

    ``scheduled_for`` (ISO 8601) is the schedule tick, stamped by orchestrator's scheduler and
    carried by retries; django-celery-beat's messages have none and the dispatcher works it out
    (see ``run_task``). A manual run carries its queued row (``run_id``), the kwargs that
    replace the task's for this run (``kwargs_override``) and who sent it (``triggered_by``);
    retries carry the last two.
    """
    # Each run starts as a Django request does. It matters when the worker keeps its connection
    # between tasks (CELERY_DB_REUSE_MAX); by default Celery closes it after each task.
    _replace_old_connection()
    request = self.request
    delivery = request.delivery_info or {}
    attempt = Attempt(
        scheduled_task_id,
        number=request.retries + 1,
        trigger=trigger,
        celery_task_id=request.id or "",
        worker=request.hostname or "",
        queue=delivery.get("routing_key") or "",
        # A message sent again because the database was down counts as delivered again: a row
        # its first try may have committed unseen is taken over, not duplicated.
        redelivered=bool(delivery.get("redelivered")) or _header(request, REQUEUED_HEADER),
        scheduled_for=dt.datetime.fromisoformat(scheduled_for) if scheduled_for else None,
        from_beat=_sent_by_beat(request),
        run_id=run_id if request.retries == 0 else None,
        kwargs_override=kwargs_override,
        triggered_by=triggered_by,
    )
    try:
        outcome = dispatcher.run_task(attempt)
    except dispatcher.DatabaseUnavailable as err:
        _send_again_for_database(self, err)
    if outcome.action is Action.RETRY:
        task = outcome.scheduled_task
        run = outcome.run
        assert task is not None and run is not None  # a retry outcome carries both
        if outcome.countdown > conf.MAX_BROKER_COUNTDOWN:
            logger.info(
                "Retry of task %r (attempt %s) is due at %s, later than the broker may hold "
                "it; the maintenance task will send it then",
                task.name,
                run.attempt + 1,
                run.next_retry_at.isoformat() if run.next_retry_at else "-",
            )
            return {"run": run.pk, "status": run.status, "attempt": run.attempt}
        kwargs = dispatcher.message_kwargs(
            trigger, run.scheduled_for, None, kwargs_override, triggered_by
        )
        options = message_options(task, outcome.countdown)
        options["queue"] = options["queue"] or _default_queue(self)
        # throw=False: the retry message is sent (or Reject raised) before we get it back, so
        # retry_sent_at says the broker has it; a retried row without it was never handed over,
        # and the maintenance task sends it again.
        retry = self.retry(
            args=(scheduled_task_id,),
            kwargs=kwargs,
            countdown=outcome.countdown,
            max_retries=outcome.max_retries,
            throw=False,
            **options,
        )
        dispatcher.mark_retry_sent(run)
        raise retry
    if outcome.run is None:
        return None
    return {"run": outcome.run.pk, "status": outcome.run.status, "attempt": outcome.run.attempt}


@shared_task(name=RUN_MAINTENANCE, ignore_result=True)
def run_maintenance() -> dict[str, int]:
    """One maintenance pass (see :func:`orchestrator.maintenance.run_maintenance`).

    beat_sync schedules it every minute as the PeriodicTask ``orchestrator:maintenance``.
    """
    report = maintenance.run_maintenance()
    if report.changed:
        logger.info("orchestrator maintenance: %s", report)
    return report.as_dict()


def _sent_by_beat(request: Any) -> bool:
    """Whether django-celery-beat sent this message (its ModelEntry adds this header)."""
    return _header(request, "periodic_task_name")


def _header(request: Any, name: str) -> bool:
    """Whether the message carries the custom header ``name`` (Celery makes custom headers
    attributes of the request; older protocols keep them in ``request.headers``)."""
    headers = getattr(request, "headers", None) or {}
    return bool(getattr(request, name, None) or headers.get(name))


def _send_again_for_database(task: Task, err: dispatcher.DatabaseUnavailable) -> NoReturn:
    """Send this very message again in ``DATABASE_REQUEUE_COUNTDOWN`` seconds; acknowledge
    this copy.

    The database was unreachable before the attempt started, so nothing ran and nothing was
    recorded. Acknowledging the message as done would lose the run; rejecting it with requeue
    would hand it straight back (RabbitMQ) while the database is still down. A copy with the
    same Celery id, retry count, arguments, queue, priority, expiry and time limits is sent
    with a countdown instead (not ``self.retry()``, which would count an attempt), marked
    with ``REQUEUED_HEADER``; only then is this one acknowledged (``Ignore``), so a worker
    that dies in between leaves the original to the broker. If the copy cannot be sent, this
    one is rejected with requeue. It is sent again for as long as
    the database stays down; its expiry, if the task has one, still applies.
    """
    request = task.request
    delivery = request.delivery_info or {}
    headers = dict(request.headers or {})
    beat_entry = getattr(request, "periodic_task_name", None)
    if beat_entry:
        headers["periodic_task_name"] = beat_entry
    headers[REQUEUED_HEADER] = True
    logger.error(
        "The database is unreachable (%s); scheduled task %s attempt %s was not started and "
        "is sent again in %s s (Celery id %s)",
        err,
        request.args[0] if request.args else "-",
        request.retries + 1,
        DATABASE_REQUEUE_COUNTDOWN,
        request.id,
    )
    signature = task.signature_from_request(
        request,
        queue=delivery.get("routing_key") or _default_queue(task),
        countdown=DATABASE_REQUEUE_COUNTDOWN,
        retries=request.retries,
        headers=headers,
    )
    try:
        signature.apply_async()
    except Exception as publish_error:
        # The copy could not be sent: hand this message back to the broker instead, which
        # delivers it again (at once) rather than lose it.
        logger.error(
            "Could not send Celery task %s again (%s); rejecting it back to the broker",
            request.id,
            publish_error,
        )
        raise Reject(publish_error, requeue=True) from None
    raise Ignore()


def _default_queue(task: Task) -> str:
    """The queue Celery's router picks for this task (task_routes, else the default queue)."""
    route = task.app.amqp.router.route({}, task.name)
    queue = route.get("queue")
    return getattr(queue, "name", None) or str(task.app.conf.task_default_queue)


def _replace_old_connection() -> None:
    """Close the connection if it is past ``CONN_MAX_AGE`` or fails ``CONN_HEALTH_CHECKS``, as
    Django does at the start of a request; the next query opens a new one. A connection inside a
    transaction belongs to the caller (an in-process test) and is left alone."""
    if not connection.in_atomic_block:
        close_old_connections()


def _record_lost(task_id: str, message: str, error_type: str, *, final: bool) -> None:
    # The worker's main process seldom touches the database: its connection may have been
    # closed by the server since, which Django only notices here.
    _replace_old_connection()
    runs = dispatcher.mark_lost(task_id, message, error_type=error_type)
    if not final:
        return
    for run in runs:
        task = ScheduledTask.objects.select_related("task_definition").get(pk=run.scheduled_task_id)
        logger.error("Task %r attempt %s lost: %s", task.name, run.attempt, message)
        # Nothing will retry this attempt, so it is a final failure as far as alerts go.
        dispatcher.report_final_failure(run, task)


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
    if getattr(sender, "name", None) != RUN_SCHEDULED_TASK or not task_id:
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
    if getattr(sender, "name", None) != RUN_SCHEDULED_TASK or not task_id:
        return
    if expired:
        # A manual run that waited past its expiry: its queued row will never start.
        try:
            dispatcher.mark_queued_expired(task_id)
        except Exception:
            logger.exception("Could not record the expired run of Celery task %s", task_id)
        return
    if not terminated:
        return
    try:
        message = f"Revoked and terminated (signal {signum})."
        _record_lost(task_id, message, TaskRun.REVOKED, final=False)
    except Exception:
        logger.exception("Could not record the revoked attempt of Celery task %s", task_id)
