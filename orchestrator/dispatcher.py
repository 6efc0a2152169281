"""Run one attempt of a scheduled task and record it: the service behind the Celery task.

:func:`run_task` holds the whole decision (skip, refuse, call, retry or finish) and writes the
history row; it does not talk to the broker. It returns a :class:`RunOutcome` that tells the
Celery task in :mod:`orchestrator.tasks` what to do next, so the broker-facing code stays a thin
adapter and everything else is testable in-process.

:func:`enqueue` sends a run to the workers now (``ScheduledTask.run_now()``, the admin action,
the API).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import logging
import time
import traceback as traceback_module
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from django.core.serializers.json import DjangoJSONEncoder
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.db.models import OuterRef, Q, Subquery
from django.dispatch import Signal
from django.utils import timezone
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from orchestrator import callables, cron, signals
from orchestrator.conf import conf
from orchestrator.models import ScheduledTask, TaskRun
from orchestrator.policies.retry import RetryPolicy
from orchestrator.routing import native_priority

if TYPE_CHECKING:
    from celery.result import AsyncResult

logger = logging.getLogger(__name__)

TASK_NAME = "orchestrator.run_scheduled_task"
# The unique constraint on TaskRun that allows one live run per task, schedule tick and attempt.
ONE_RUN_PER_TICK = "orch_run_one_per_tick"

# error_type of the "lost" rows that are not final failures: the attempt ran again after its
# worker died, or an operator terminated it on purpose. Other lost attempts (a hard time limit)
# got task_failed, and count as final failures.
WORKER_LOST = "WorkerLost"
REVOKED = "Revoked"
# The runs that end a task's run for good. The last of them before an attempt tells whether a
# success is a recovery.
FINAL_RUNS = Q(status__in=(TaskRun.Status.SUCCEEDED, TaskRun.Status.FAILED)) | (
    Q(status=TaskRun.Status.LOST) & ~Q(error_type__in=(WORKER_LOST, REVOKED))
)
FAILED_FINAL_STATUSES = (TaskRun.Status.FAILED, TaskRun.Status.LOST)

_TRUNCATION_MARK = "… [{count} characters cut]"

# The history is written again after a dropped connection (the server restarted, an operator
# or a pooler terminated the backend): 5 tries, 0.5 s to 4 s apart, about 7.5 s in all. Enough
# to ride out a restart of a few seconds; bounded, so a worker does not hang on a database
# that is gone. The sleep is looked up at each call so that tests can replace it.
HISTORY_WRITE_ATTEMPTS = 5
HISTORY_WRITE_WAIT = wait_exponential(multiplier=0.5, min=0.5, max=4)
_CONNECTION_ERRORS = (OperationalError, InterfaceError)
_sleep: Callable[[float], None] = time.sleep

_T = TypeVar("_T")


class InvalidTaskError(Exception):
    """The scheduled task's row cannot run as it stands (it was edited around validation)."""


class Action(enum.StrEnum):
    """What the Celery task does after :func:`run_task` returns."""

    DONE = "done"  # the attempt is recorded and nothing follows it
    RETRY = "retry"  # send the next attempt through the broker after ``countdown`` seconds
    DROP = "drop"  # the task no longer exists, or this tick's attempt already ran: no row


@dataclass(frozen=True)
class RunOutcome:
    """The result of one attempt, and what the Celery task must do next.

    ``scheduled_task`` is the row as loaded for this attempt (None if it is gone): the retry's
    queue, priority, expiry and time limit are read from it, so an admin edit made before this
    attempt applies to the next one without another query. ``max_retries`` is the policy's, to
    be passed to ``Task.retry()`` explicitly.
    """

    action: Action
    run: TaskRun | None = None
    scheduled_task: ScheduledTask | None = None
    countdown: float = 0.0
    max_retries: int = 0

    @property
    def status(self) -> str | None:
        return self.run.status if self.run is not None else None


def truncate(text: str, limit: int, *, keep: str = "head") -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was cut.

    ``keep="tail"`` keeps the end instead (for tracebacks, whose last lines name the error).
    NUL characters are replaced and unpaired surrogates (undecodable bytes read with
    ``surrogateescape``) written as ``\\udcff`` escapes: PostgreSQL text columns refuse the first,
    and UTF-8 cannot encode the second.
    """
    text = text.replace("\x00", "\ufffd").encode("utf-8", "backslashreplace").decode("utf-8")
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    # The mark counts towards the limit, and its own length depends on the count it shows:
    # grow the count until it is exact (a step or two).
    cut = len(text) - limit
    while True:
        mark = _TRUNCATION_MARK.format(count=cut)
        room = limit - len(mark)
        exact = len(text) - max(room, 0)
        if exact == cut or room <= 0:
            break
        cut = exact
    if room <= 0:
        return text[:limit] if keep == "head" else text[-limit:]
    if keep == "tail":
        return mark + text[-room:]
    return text[:room] + mark


def json_safe_result(value: Any, limit: int) -> Any:
    """``value`` as something a JSONField stores, within ``limit`` characters of JSON.

    JSON-able values are normalised through Django's encoder (dates, decimals and UUIDs become
    strings, tuples lists). Anything else is stored as its ``repr``. When the JSON text is longer
    than ``limit``, the stored value is that text truncated, as a string.
    """
    try:
        # allow_nan=False: PostgreSQL's jsonb refuses NaN and Infinity.
        # ensure_ascii=False leaves unpaired surrogates raw, for _is_utf8() to find: jsonb refuses
        # their escapes as it refuses \u0000.
        text = json.dumps(value, cls=DjangoJSONEncoder, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is None or "\\u0000" in text or not _is_utf8(text):
        return truncate(_safe_repr(value), limit)
    if len(text) > limit:
        return truncate(text, limit)
    return json.loads(text)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as err:  # a broken __repr__ must not lose the run's outcome
        return f"<unrepresentable {type(value).__name__}: {type(err).__name__}>"


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return name[:255]


def _error_message(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:
        message = ""
    return truncate(message or type(exc).__name__, conf.MAX_ERROR_CHARS)


def send_signal(signal: Signal, run: TaskRun, task: ScheduledTask) -> None:
    """Send ``signal`` robustly: a receiver that raises is logged and changes nothing."""
    responses = signal.send_robust(sender=ScheduledTask, run=run, scheduled_task=task)
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error(
                "Receiver %r of an orchestrator signal failed for task %r, attempt %s",
                receiver,
                task.name,
                run.attempt,
                exc_info=(type(response), response, response.__traceback__),
            )


def with_reconnect(write: Callable[[], _T], *, what: str) -> _T:
    """``write()``, done again on a fresh connection if the database connection failed.

    Each failure is logged at ERROR with ``what`` (which task and attempt it was for); the last
    one is raised. Inside a transaction ``write`` runs once: the transaction belongs to the
    caller and went down with the connection, so writing again outside it would be wrong.
    """
    if connection.in_atomic_block:
        return write()

    def reconnect(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.error(
            "Database error while %s (try %s of %s): %s",
            what,
            state.attempt_number,
            HISTORY_WRITE_ATTEMPTS,
            error,
        )
        # Django opens a new connection on the next query once this one is closed; closing a
        # dead connection may itself fail, and changes nothing then.
        with contextlib.suppress(DatabaseError):
            connection.close()

    retrying = Retrying(
        retry=retry_if_exception_type(_CONNECTION_ERRORS),
        stop=stop_after_attempt(HISTORY_WRITE_ATTEMPTS),
        wait=HISTORY_WRITE_WAIT,
        sleep=lambda seconds: _sleep(seconds),
        after=reconnect,
        reraise=True,
    )
    return retrying(write)


def load_scheduled_task(scheduled_task_id: int) -> ScheduledTask | None:
    """The task with its definition, in one query; None if it no longer exists.

    The row carries ``previous_final_status``: the status of its last run that ended for good
    (see ``FINAL_RUNS``), or None, so a recovery is detected without another query.
    """
    previous_final = (
        TaskRun.objects.filter(FINAL_RUNS, scheduled_task=OuterRef("pk"))
        .order_by("-started_at", "-id")
        .values("status")[:1]
    )
    return (
        ScheduledTask.objects.select_related("task_definition")
        .annotate(previous_final_status=Subquery(previous_final))
        .filter(pk=scheduled_task_id)
        .first()
    )


def current_tick(task: ScheduledTask, at: dt.datetime) -> dt.datetime | None:
    """The latest time at or before ``at`` when ``task``'s cron fires; None if it cannot say."""
    try:
        return cron.previous_run(task.cron, task.timezone, at)
    except (cron.CronError, ValueError, KeyError):  # a row edited around validation
        return None


def _is_duplicate_tick(err: IntegrityError) -> bool:
    # PostgreSQL names the constraint; SQLite lists its columns.
    text = str(err)
    return ONE_RUN_PER_TICK in text or (
        "UNIQUE constraint failed" in text and "scheduled_for" in text
    )


def _insert(base: dict[str, Any], **fields: Any) -> TaskRun | None:
    """Insert a run; None if a live run of the same task, tick and attempt already exists.

    The insert is tried again on a fresh connection after a connection error (see
    :func:`with_reconnect`). The error may have come after the server committed it: a later
    try then looks for that row (same task, attempt, Celery id and start time) and takes it as
    its own rather than inserting it twice or mistaking it for a duplicate.
    """
    task = base["scheduled_task"]
    tries = 0

    def insert() -> TaskRun:
        nonlocal tries
        tries += 1
        if tries > 1 and base["celery_task_id"]:
            committed = TaskRun.objects.filter(
                scheduled_task=task,
                attempt=base["attempt"],
                celery_task_id=base["celery_task_id"],
                started_at=fields["started_at"],
            ).first()
            if committed is not None:
                return committed
        if base["scheduled_for"] is not None and connection.in_atomic_block:
            # A caller's transaction survives the duplicate only through a savepoint. Workers
            # run in autocommit, where a failed INSERT costs nothing more.
            with transaction.atomic():
                return TaskRun.objects.create(**base, **fields)
        return TaskRun.objects.create(**base, **fields)

    what = f"recording task {task.name!r} attempt {base['attempt']} as {fields['status']}"
    try:
        return with_reconnect(insert, what=what)
    except IntegrityError as err:
        if base["scheduled_for"] is None or not _is_duplicate_tick(err):
            raise
    except _CONNECTION_ERRORS:
        # Nothing is called without a row to record it in: the attempt stops here, and this
        # line is its only trace.
        logger.error(
            "Could not record task %r attempt %s as %s (Celery id %s); the database is "
            "unreachable and the function was not called",
            task.name,
            base["attempt"],
            fields["status"],
            base["celery_task_id"] or "-",
        )
        raise
    logger.warning(
        "Task %r attempt %s for the tick of %s already has a run; dropping this duplicate "
        "(Celery id %s)",
        task.name,
        base["attempt"],
        base["scheduled_for"].isoformat(),
        base["celery_task_id"] or "-",
    )
    return None


def run_task(
    scheduled_task_id: int,
    *,
    trigger: str = TaskRun.Trigger.SCHEDULE,
    attempt: int = 1,
    celery_task_id: str = "",
    worker: str = "",
    queue: str = "",
    redelivered: bool = False,
    scheduled_for: dt.datetime | None = None,
    from_beat: bool = False,
    now: Callable[[], dt.datetime] = timezone.now,
) -> RunOutcome:
    """Run attempt ``attempt`` (1-based) of scheduled task ``scheduled_task_id``, and record it.

    * A task that no longer exists: logged, nothing recorded, ``Action.DROP``.
    * A disabled task or definition: a ``skipped`` run, ``task_skipped``; the function is not
      called.
    * An import path the allow-list refuses (re-checked now, so a row edited in the database is
      held to the same rule as a validated one), or kwargs that do not fit the function: a
      ``failed`` run saying why, ``task_failed``, no retry.
    * Otherwise a ``running`` row is written, ``func(**kwargs)`` called and the row updated:
      ``succeeded`` (``task_succeeded``, then ``task_recovered`` if the last final run had
      failed), ``retried`` with ``next_retry_at`` (``task_retrying``, ``Action.RETRY``), or
      ``failed`` (``task_failed``). The retry decision uses the task's policy as loaded now.

    Signals are sent after the row is written. A successful attempt costs three queries (load,
    insert, update) plus whatever the signal receivers do. A query that fails on a dropped
    database connection is logged and tried again on a new one (:func:`with_reconnect`); an
    outcome that still cannot be written is logged at ERROR, and the run goes on.

    ``redelivered`` says the broker delivered this message again after a worker died. The
    ``running`` row the dead worker left for this Celery task id is marked ``lost``, and the
    attempt runs again in the same tick. If that attempt had already finished (the worker died
    after writing its outcome, before acknowledging the message), the message is dropped
    without calling the function.

    ``scheduled_for`` is the schedule tick the run belongs to. A first attempt sent by beat
    (``from_beat``) without one takes the latest tick of the cron expression; retries carry it
    on. At most one live (not ``lost``) row may exist per task, tick and attempt, so a second
    beat, or a message delivered again after its run was recorded, is dropped (``Action.DROP``)
    without calling the function. A beat message that waited in the broker past the next tick
    counts as that tick: missed ticks are coalesced, as cron does, rather than run in a burst.
    Runs sent any other way (run_now, the API, a hand-sent message) have no tick and no guard.
    """
    task = with_reconnect(
        lambda: load_scheduled_task(scheduled_task_id),
        what=f"loading scheduled task {scheduled_task_id} (attempt {attempt})",
    )
    if task is None:
        logger.warning(
            "Scheduled task %s no longer exists; dropping its run (attempt %s, Celery id %s)",
            scheduled_task_id,
            attempt,
            celery_task_id or "-",
        )
        return RunOutcome(Action.DROP)

    if redelivered and celery_task_id:
        earlier = _take_over_redelivered(task, celery_task_id, attempt, now)
        finished = next((r for r in earlier if r.status in TaskRun.FINISHED_STATUSES), None)
        if finished is not None:
            logger.warning(
                "Task %r attempt %s was delivered again after it had finished (%s, run %s, "
                "Celery id %s); not running it again",
                task.name,
                attempt,
                finished.status,
                finished.pk,
                celery_task_id,
            )
            return RunOutcome(Action.DROP, scheduled_task=task)
        if scheduled_for is None:
            # The attempt belongs to the tick the dead worker ran it for, not to the tick of
            # the time it came back.
            scheduled_for = next((r.scheduled_for for r in earlier if r.scheduled_for), None)

    if scheduled_for is None and from_beat and attempt == 1:
        # By the worker's clock: beat sends at or after the tick by its own, so the two clocks
        # must agree (NTP); a worker running behind beat would place the run in the tick before.
        scheduled_for = current_tick(task, now())

    definition = task.task_definition
    try:
        policy: RetryPolicy | None = task.retry_policy()
    except ValueError as err:  # a policy field edited in the database to a value it refuses
        policy = None
        policy_error = err
    base = {
        "scheduled_task": task,
        "attempt": attempt,
        "max_attempts": policy.max_attempts if policy is not None else attempt,
        "trigger": trigger,
        "celery_task_id": celery_task_id[:255],
        "worker": worker[:255],
        "queue": (queue or task.queue)[:200],
        "priority": task.priority,
        "time_limit": task.time_limit,
        "scheduled_for": scheduled_for,
    }

    if not task.enabled or not definition.enabled:
        reason = (
            f"Skipped: scheduled task {task.name!r} is disabled."
            if not task.enabled
            else f"Skipped: task definition {definition.name!r} is disabled."
        )
        started = now()
        run = _insert(
            base,
            status=TaskRun.Status.SKIPPED,
            started_at=started,
            finished_at=started,
            duration=dt.timedelta(0),
            error_message=reason,
        )
        if run is None:
            return RunOutcome(Action.DROP, scheduled_task=task)
        logger.info("%s (attempt %s)", reason, attempt)
        send_signal(signals.task_skipped, run, task)
        return RunOutcome(Action.DONE, run, task)

    try:
        if policy is None:
            raise InvalidTaskError(f"its retry policy is invalid: {policy_error}")
        func = definition.resolve()
        if not isinstance(task.kwargs, dict):
            raise InvalidTaskError(
                f"kwargs must be a JSON object, not a JSON {type(task.kwargs).__name__}."
            )
        callables.check_kwargs(func, task.kwargs)
    except (callables.CallableError, InvalidTaskError) as err:
        # A configuration error: retrying cannot fix it, so it is final at once.
        started = now()
        run = _insert(
            base,
            status=TaskRun.Status.FAILED,
            started_at=started,
            finished_at=started,
            duration=dt.timedelta(0),
            error_type=_error_type(err),
            error_message=truncate(
                f"Refused to run {definition.import_path!r} for task {task.name!r}: {err}",
                conf.MAX_ERROR_CHARS,
            ),
        )
        if run is None:
            return RunOutcome(Action.DROP, scheduled_task=task)
        logger.error("Task %r not run: %s", task.name, run.error_message)
        send_signal(signals.task_failed, run, task)
        return RunOutcome(Action.DONE, run, task)

    assert policy is not None  # an invalid policy was refused above
    run = _insert(base, status=TaskRun.Status.RUNNING, started_at=now())
    if run is None:
        return RunOutcome(Action.DROP, scheduled_task=task)
    error: Exception | None = None
    try:
        value = func(**task.kwargs)
    except Exception as exc:  # the function's failure is data for the run, not ours to raise
        error = exc
        formatted_traceback = traceback_module.format_exc()
    finished = now()
    run.finished_at = finished
    run.duration = finished - run.started_at
    update_fields = ["status", "finished_at", "duration"]

    if error is None:
        run.status = TaskRun.Status.SUCCEEDED
        run.result = json_safe_result(value, conf.MAX_RESULT_CHARS)
        _save_outcome(run, task, [*update_fields, "result"])
        logger.info("Task %r attempt %s succeeded", task.name, attempt)
        send_signal(signals.task_succeeded, run, task)
        if task.previous_final_status in FAILED_FINAL_STATUSES:  # type: ignore[attr-defined]
            send_signal(signals.task_recovered, run, task)
        return RunOutcome(Action.DONE, run, task)

    decision = policy.decide(attempt)
    run.error_type = _error_type(error)
    run.error_message = _error_message(error)
    run.traceback = truncate(formatted_traceback, conf.MAX_TRACEBACK_CHARS, keep="tail")
    update_fields += ["error_type", "error_message", "traceback"]
    if decision.retry:
        run.status = TaskRun.Status.RETRIED
        run.next_retry_at = finished + dt.timedelta(seconds=decision.countdown)
        _save_outcome(run, task, [*update_fields, "next_retry_at"])
        logger.warning(
            "Task %r attempt %s of %s failed (%s: %s); retrying in %.1f s",
            task.name,
            attempt,
            policy.max_attempts,
            run.error_type,
            run.error_message[:200],
            decision.countdown,
        )
        send_signal(signals.task_retrying, run, task)
        return RunOutcome(
            Action.RETRY, run, task, countdown=decision.countdown, max_retries=policy.max_retries
        )

    run.status = TaskRun.Status.FAILED
    _save_outcome(run, task, update_fields)
    logger.error(
        "Task %r failed for good at attempt %s of %s (%s: %s)",
        task.name,
        attempt,
        policy.max_attempts,
        run.error_type,
        run.error_message[:200],
    )
    send_signal(signals.task_failed, run, task)
    return RunOutcome(Action.DONE, run, task)


def _save_outcome(run: TaskRun, task: ScheduledTask, update_fields: list[str]) -> None:
    """Write the outcome held in ``run``; if the database stays unreachable, log it instead.

    The function has run by now, so its outcome must not vanish with the connection: the
    ERROR line carries what the row would have said (never the result or the kwargs, which may
    hold data the logs must not), and the caller goes on as if it had been written (signals,
    retry), leaving the row ``running`` in the database.
    """
    try:
        with_reconnect(
            lambda: run.save(update_fields=update_fields),
            what=f"recording task {task.name!r} attempt {run.attempt} as {run.status}",
        )
    except _CONNECTION_ERRORS as err:
        logger.error(
            "Could not record the outcome of task %r attempt %s (run %s, Celery id %s): "
            "status %s, finished at %s after %.3f s%s; the database said: %s",
            task.name,
            run.attempt,
            run.pk,
            run.celery_task_id or "-",
            run.status,
            run.finished_at.isoformat() if run.finished_at else "-",
            run.duration.total_seconds() if run.duration is not None else 0.0,
            f", {run.error_type}: {run.error_message[:200]}" if run.error_type else "",
            err,
        )


def mark_lost(
    celery_task_id: str,
    message: str,
    *,
    error_type: str = "",
    now: Callable[[], dt.datetime] = timezone.now,
) -> list[TaskRun]:
    """Mark the ``running`` rows of Celery task ``celery_task_id`` as ``lost``; return them.

    For attempts whose code never got to record an outcome: the worker process was killed at
    its time limit, the task was revoked with ``terminate=True``, or the worker died.
    """
    runs = list(
        TaskRun.objects.filter(celery_task_id=celery_task_id, status=TaskRun.Status.RUNNING)
    )
    _set_lost(runs, message, error_type, now())
    return runs


def _set_lost(runs: list[TaskRun], message: str, error_type: str, finished: dt.datetime) -> None:
    for run in runs:
        run.status = TaskRun.Status.LOST
        run.finished_at = finished
        run.duration = max(finished - run.started_at, dt.timedelta(0))
        run.error_type = error_type[:255]
        run.error_message = truncate(message, conf.MAX_ERROR_CHARS)
    if runs:
        TaskRun.objects.bulk_update(
            runs, ["status", "finished_at", "duration", "error_type", "error_message"]
        )


def _take_over_redelivered(
    task: ScheduledTask, celery_task_id: str, attempt: int, now: Callable[[], dt.datetime]
) -> list[TaskRun]:
    """The rows of ``attempt`` of a message delivered again, its dead worker's marked lost.

    Every ``running`` row of the Celery task id is marked ``lost`` (the dead worker can write
    nothing more); the rows of this attempt are returned, to tell whether it had finished.
    """

    def take_over() -> list[TaskRun]:
        rows = list(TaskRun.objects.filter(celery_task_id=celery_task_id, scheduled_task=task))
        running = [r for r in rows if r.status == TaskRun.Status.RUNNING]
        _set_lost(
            running,
            "The worker running this attempt was lost; the broker delivered it again.",
            WORKER_LOST,
            now(),
        )
        return [r for r in rows if r.attempt == attempt]

    return with_reconnect(
        take_over, what=f"taking over task {task.name!r} attempt {attempt} delivered again"
    )


def mark_retry_sent(run: TaskRun, now: Callable[[], dt.datetime] = timezone.now) -> None:
    """Record that the retry following ``run`` was handed to the broker.

    A dropped connection is tried again (:func:`with_reconnect`): an unrecorded send makes the
    maintenance pass send the retry a second time. A failure to write it in the end is logged,
    never raised: the retry is on its way either way, and raising here would fail an attempt
    whose outcome is already recorded.
    """
    try:
        with_reconnect(
            lambda: TaskRun.objects.filter(pk=run.pk).update(retry_sent_at=now()),
            what=f"recording the retry of run {run.pk} as sent",
        )
    except DatabaseError:
        logger.exception("Could not record the retry of run %s as sent", run.pk)


def message_options(task: ScheduledTask, countdown: float = 0.0) -> dict[str, Any]:
    """The ``apply_async`` options of a run of ``task`` sent ``countdown`` seconds from now.

    ``expires`` counts from when the run is due, not from when it is sent, so a retry waiting
    longer than ``task.expires`` is not discarded before it could start. ``queue`` is None for
    the default routing; the Celery task's retry makes it explicit. A task without a priority
    gets the project's ``task_default_priority``, as beat's messages do: an explicit None would
    override it (and kombu's Redis transport reads a missing priority as its most urgent).
    """
    from celery import current_app

    priority = native_priority(task.priority)
    return {
        "queue": task.queue or None,
        "priority": current_app.conf.task_default_priority if priority is None else priority,
        "expires": countdown + task.expires if task.expires else None,
        "time_limit": task.time_limit,
    }


def enqueue(task: ScheduledTask, trigger: str = TaskRun.Trigger.MANUAL) -> AsyncResult:
    """Send a run of ``task`` to the workers now, with its queue, priority, expiry and limit.

    The message is the one beat sends (``args=[task.pk]``) plus the trigger, so the worker
    handles manual and scheduled runs alike. Disabled tasks are sent too: the worker records
    them as skipped, which shows the operator what happened.
    """
    from orchestrator.tasks import run_scheduled_task

    return run_scheduled_task.apply_async(
        args=[task.pk], kwargs={"trigger": str(trigger)}, **message_options(task)
    )
