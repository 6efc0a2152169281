"""Run one attempt of a scheduled task and record it: the service behind the Celery task.

:func:`run_task` takes an :class:`Attempt` (what the Celery request says), decides (drop, skip,
refuse, call), writes the history row and returns a :class:`RunOutcome` that tells the Celery
task in :mod:`orchestrator.tasks` what to do next (nothing, or a retry through the broker). It
never talks to the broker itself, so everything here is testable in-process.

Its helpers live in their own modules: :mod:`orchestrator.sanitize` (what a task returned or
raised, made storable), :mod:`orchestrator.reconnect` (writes that survive a dropped database
connection) and :mod:`orchestrator.routing` (message options). :func:`enqueue` sends a run now,
the same message beat sends.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery.result import AsyncResult
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F
from django.dispatch import Signal
from django.utils import timezone

from orchestrator import callables, cron, history, rollups, runlog, signals
from orchestrator.conf import conf
from orchestrator.models import ScheduledTask, TaskRun, TaskState
from orchestrator.policies.retry import RetryPolicy, exception_names
from orchestrator.prepared import PreparedGet, PreparedInsert
from orchestrator.reconnect import CONNECTION_ERRORS, with_reconnect
from orchestrator.redaction import redact_run_result, redact_run_text
from orchestrator.routing import message_options, send_task_message
from orchestrator.sanitize import (
    UnreadableJSON,
    error_message,
    error_type,
    json_safe_result,
    truncate,
)
from orchestrator.task_names import RUN_SCHEDULED_TASK
from orchestrator.validators import MAX_KWARGS_DEPTH, nested_deeper_than

logger = logging.getLogger(__name__)

Now = Callable[[], dt.datetime]


@dataclass(frozen=True)
class Attempt:
    """One delivery of the dispatch message: which task, which attempt, and where it came from.

    ``number`` is 1-based (Celery's retry count plus one). ``scheduled_for`` is the schedule tick
    the run belongs to: orchestrator's scheduler stamps it on the first attempt and retries carry
    it. ``from_beat`` says another beat scheduler sent it without one, so the tick is worked out
    from the worker's clock. ``redelivered`` says the broker delivered it again after a worker
    died. A manual run carries the ``queued`` row written when it was sent (``run_id``), the
    arguments that replace the task's for this run (``kwargs_override``) and who sent it
    (``triggered_by``, a user id); its retries carry the last two.
    """

    scheduled_task_id: int
    number: int = 1
    trigger: str = TaskRun.Trigger.SCHEDULE
    celery_task_id: str = ""
    worker: str = ""
    queue: str = ""
    redelivered: bool = False
    scheduled_for: dt.datetime | None = None
    from_beat: bool = False
    run_id: int | None = None
    kwargs_override: dict[str, Any] | None = None
    triggered_by: int | None = None


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


class InvalidTaskError(Exception):
    """The scheduled task's row cannot run as it stands (it was edited around validation)."""


class DatabaseUnavailable(Exception):
    """The database could not be reached before the attempt started.

    Raised by :func:`run_task` when loading the task or writing the attempt's first row failed
    on a dropped or refused connection (after :mod:`orchestrator.reconnect`'s tries): nothing
    was called and nothing recorded, so the message must be delivered again, not acknowledged
    as done. The Celery task sends it again with a countdown.
    """


def run_task(attempt: Attempt, *, now: Now = timezone.now) -> RunOutcome:
    """Run ``attempt`` and record it; say what the Celery task does next.

    * The task no longer exists, this tick's attempt already has a run (a second beat, a
      message delivered again after its run was recorded), or the run was cancelled before it
      started: nothing is called, ``Action.DROP``.
    * The task or its definition is disabled, or the task is paused: a ``skipped`` run,
      ``task_skipped``. With ``overlap="skip"``, so is a run that arrives while another runs.
    * The allow-list refuses the import path (checked again now), the kwargs do not fit the
      function or the policy fields are invalid: a ``failed`` run saying why, ``task_failed``.
    * Otherwise a ``running`` row is written, ``func(**kwargs)`` is called (what it logs and
      prints is kept in the row's ``log``, see :mod:`orchestrator.runlog`) and the row updated:
      ``succeeded`` (``task_succeeded``; ``task_recovered`` after a final failure), ``retried``
      (``task_retrying``, ``Action.RETRY``) or ``failed`` (``task_failed``; an exception rule
      may make it final at once, and ``pause_after_failures`` final failures in a row pause
      the task, ``task_paused``). A run cancelled while it ran keeps ``cancelled``.

    A successful attempt costs three statements on PostgreSQL (load, insert, and the update
    with the add to the per-task aggregates in one statement); four elsewhere, where the add is
    its own statement in the update's transaction. Signals are sent after the row is written.
    """
    try:
        task = with_reconnect(
            lambda: load_scheduled_task(attempt.scheduled_task_id),
            what=f"loading scheduled task {attempt.scheduled_task_id} (attempt {attempt.number})",
        )
    except CONNECTION_ERRORS as err:
        raise DatabaseUnavailable(
            f"loading scheduled task {attempt.scheduled_task_id}: {err}"
        ) from err
    if task is None:
        logger.warning(
            "Scheduled task %s no longer exists; dropping its run (attempt %s, Celery id %s)",
            attempt.scheduled_task_id,
            attempt.number,
            attempt.celery_task_id or "-",
        )
        return RunOutcome(Action.DROP)
    try:
        tick = _tick_of(attempt, task, now)
    except _NotToRun:
        return RunOutcome(Action.DROP, scheduled_task=task)
    except CONNECTION_ERRORS as err:
        raise DatabaseUnavailable(f"checking task {task.name!r}'s earlier runs: {err}") from err
    record = _Record(task, attempt, tick, now)

    if reason := _skip_reason(task, now):
        return record.without_call(TaskRun.Status.SKIPPED, reason, signals.task_skipped)
    try:
        func, kwargs, policy = _prepare(task, attempt)
    except (callables.CallableError, InvalidTaskError) as err:
        # A configuration error: retrying cannot fix it, so it is final at once.
        path = task.task_definition.import_path
        message = redact_run_text(
            f"Refused to run {path!r} for task {task.name!r}: {err}", _run_kwargs(task, attempt)
        )
        return record.without_call(
            TaskRun.Status.FAILED, message, signals.task_failed, error_type=error_type(err)
        )

    run = record.start(policy)
    if run is None or run.status != TaskRun.Status.RUNNING:  # a duplicate, or not its turn
        return RunOutcome(Action.DROP if run is None else Action.DONE, run, task)
    run_log = runlog.new_run_log(kwargs)
    try:
        with runlog.capture(run_log):
            value = func(**kwargs)
    except Exception as exc:  # the function's failure is data for the run, not ours to raise
        run.log = _stored_log(run_log, kwargs)
        return _failed(run, task, policy, exc, traceback.format_exc(), now, kwargs)
    run.log = _stored_log(run_log, kwargs)
    return _succeeded(run, task, value, now, kwargs)


def _stored_log(run_log: runlog.RunLog, kwargs: dict[str, Any]) -> str:
    # Each line was masked as it arrived (Slack shapes, secret kwargs); the channel targets and
    # the bot token orchestrator knows are masked here, as in the run's error (cached lookups).
    return redact_run_text(run_log.text(), kwargs)


# Compiled once per process: the SQL of this three-table select, and of the history row's
# 29-column insert, cost more than the server takes to run them.
_LOAD = PreparedGet(lambda: ScheduledTask.objects.select_related("task_definition", "state"))
_INSERT_RUN = PreparedInsert(TaskRun)


def load_scheduled_task(scheduled_task_id: int) -> ScheduledTask | None:
    """The task with its definition and its state (see :class:`TaskState`), in one query."""
    return _LOAD.get(scheduled_task_id)


def current_tick(task: ScheduledTask, at: dt.datetime) -> dt.datetime | None:
    """The latest time at or before ``at`` when ``task``'s cron fires; None if it cannot say."""
    try:
        return cron.previous_run(task.cron, task.timezone, at)
    except (cron.CronError, ValueError, KeyError):  # a row edited around validation
        return None


# --- which tick, and whether to run at all ------------------------------------------------------


class _NotToRun(Exception):
    """This attempt must not run: it finished before (a redelivery), or it was cancelled."""


def _tick_of(attempt: Attempt, task: ScheduledTask, now: Now) -> dt.datetime | None:
    """The schedule tick of this attempt; raise :class:`_NotToRun` for one that must not run.

    A message the broker delivered again after its worker died: the ``running`` row the dead
    worker left is marked ``lost`` and the attempt runs again in the tick it ran for, unless it
    had finished (the worker died between writing the outcome and acknowledging the message).
    A first attempt sent by a beat that stamps no tick (django-celery-beat's own scheduler) is
    placed by the worker's clock, so the clocks of beat and the workers must agree (NTP).
    Runs sent any other way (run_now, the API) have no tick and no guard. A retry whose run was
    cancelled meanwhile does not run (one query, for retries only: the broker may still hold
    its message, and Celery's revoke is forgotten by a worker that restarts).
    """
    if attempt.number > 1 and attempt.celery_task_id and _retry_cancelled(attempt):
        logger.info(
            "Task %r attempt %s was cancelled before it started; dropping it (Celery id %s)",
            task.name,
            attempt.number,
            attempt.celery_task_id,
        )
        raise _NotToRun
    tick = attempt.scheduled_for
    if attempt.redelivered and attempt.celery_task_id:
        earlier = _take_over_redelivered(task, attempt, now)
        finished = next((r for r in earlier if r.status in TaskRun.FINISHED_STATUSES), None)
        if finished is not None:
            logger.warning(
                "Task %r attempt %s was delivered again after it had finished (%s, run %s, "
                "Celery id %s); not running it again",
                task.name,
                attempt.number,
                finished.status,
                finished.pk,
                attempt.celery_task_id,
            )
            raise _NotToRun
        tick = tick or next((r.scheduled_for for r in earlier if r.scheduled_for), None)
    if tick is None and attempt.from_beat and attempt.number == 1:
        # A beat message that waited in the broker past the next tick counts as that tick:
        # missed ticks are coalesced, as cron does, rather than run in a burst.
        tick = current_tick(task, now())
    return tick


def _retry_cancelled(attempt: Attempt) -> bool:
    return TaskRun.objects.filter(
        celery_task_id=attempt.celery_task_id,
        attempt=attempt.number - 1,
        status=TaskRun.Status.CANCELLED,
    ).exists()


def _take_over_redelivered(task: ScheduledTask, attempt: Attempt, now: Now) -> list[TaskRun]:
    """The rows of ``attempt``'s number for its Celery id, its dead worker's marked lost."""

    def take_over() -> list[TaskRun]:
        rows = list(
            TaskRun.objects.filter(celery_task_id=attempt.celery_task_id, scheduled_task=task)
        )
        running = [r for r in rows if r.status == TaskRun.Status.RUNNING]
        set_lost(
            running,
            "The worker running this attempt was lost; the broker delivered it again.",
            TaskRun.WORKER_LOST,
            now(),
        )
        return [r for r in rows if r.attempt == attempt.number]

    return with_reconnect(
        take_over,
        what=f"taking over task {task.name!r} attempt {attempt.number} delivered again",
    )


def _skip_reason(task: ScheduledTask, now: Now) -> str:
    if not task.enabled:
        return f"Skipped: scheduled task {task.name!r} is disabled."
    if not task.task_definition.enabled:
        return f"Skipped: task definition {task.task_definition.name!r} is disabled."
    if task.paused and task.is_paused(now()):
        return f"paused: {task.pause_reason}"
    return ""


def _prepare(
    task: ScheduledTask, attempt: Attempt
) -> tuple[Callable[..., Any], dict[str, Any], RetryPolicy]:
    """The function, its kwargs (the run's own, or the task's) and the retry policy in force;
    raise when the row cannot run."""
    try:
        policy = task.retry_policy()
    except ValueError as err:  # a policy field edited in the database to a value it refuses
        raise InvalidTaskError(f"its retry policy is invalid: {err}") from None
    func = task.task_definition.resolve()
    kwargs = _run_kwargs(task, attempt)
    if isinstance(kwargs, UnreadableJSON) or nested_deeper_than(kwargs, MAX_KWARGS_DEPTH):
        raise InvalidTaskError(
            f"its kwargs are nested more than {MAX_KWARGS_DEPTH} levels deep, which no task "
            "needs and which cannot be read back safely; enter them again as a flatter JSON "
            "object in the admin."
        )
    if not isinstance(kwargs, dict):
        raise InvalidTaskError(f"kwargs must be a JSON object, not a JSON {type(kwargs).__name__}.")
    callables.check_kwargs(func, kwargs)
    return func, kwargs, policy


def _run_kwargs(task: ScheduledTask, attempt: Attempt) -> Any:
    """The kwargs this attempt runs with: the run's own, or the task's."""
    return task.kwargs if attempt.kwargs_override is None else attempt.kwargs_override


# --- writing the history ------------------------------------------------------------------------


class _Record:
    """The history row of one attempt: its fixed values, and the ways it is first written."""

    def __init__(
        self, task: ScheduledTask, attempt: Attempt, tick: dt.datetime | None, now: Now
    ) -> None:
        self.task = task
        self.now = now
        self.base: dict[str, Any] = {
            "scheduled_task": task,
            "attempt": attempt.number,
            "max_attempts": attempt.number,
            "trigger": attempt.trigger,
            "celery_task_id": attempt.celery_task_id[:255],
            "worker": attempt.worker[:255],
            "queue": (attempt.queue or task.queue)[:200],
            "priority": task.priority,
            "time_limit": task.time_limit,
            "scheduled_for": tick,
            "tick_key": TaskRun.make_tick_key(task.pk, tick, attempt.number),
            "kwargs_override": attempt.kwargs_override,
            "triggered_by_id": attempt.triggered_by,
            "task_version": task.version,
        }
        self.run_id = attempt.run_id

    def start(self, policy: RetryPolicy) -> TaskRun | None:
        """Write the ``running`` row and return it.

        None if this tick's attempt already has one; a ``skipped`` run if another run of an
        ``overlap="skip"`` task is running; the ``cancelled`` row if the queued run was
        cancelled before it started.
        """
        self.base["max_attempts"] = policy.max_attempts
        if self.task.overlap != ScheduledTask.Overlap.SKIP:
            return self._start()

        # Check and start under the task's row lock: two runs arriving together must not both
        # see the other one missing. An UPDATE of the row is the lock every database has
        # (SQLite has no SELECT ... FOR UPDATE, and takes its write lock here).
        def check_and_start() -> TaskRun | None:
            with transaction.atomic():
                ScheduledTask.objects.filter(pk=self.task.pk).update(id=F("id"))
                running = (
                    TaskRun.objects.filter(scheduled_task=self.task, status=TaskRun.Status.RUNNING)
                    .order_by("started_at")
                    .first()
                )
                if running is None:
                    return self._start()
                return self._skipped_for_overlap(running)

        try:
            return with_reconnect(check_and_start, what=f"starting task {self.task.name!r}")
        except CONNECTION_ERRORS as err:
            raise DatabaseUnavailable(f"starting task {self.task.name!r}: {err}") from err

    def _start(self) -> TaskRun | None:
        if self.run_id is None:
            return self._insert(status=TaskRun.Status.RUNNING, started_at=self.now())
        return self._claim(status=TaskRun.Status.RUNNING, started_at=self.now())

    def _skipped_for_overlap(self, running: TaskRun) -> TaskRun | None:
        reason = (
            f"Skipped: run {running.pk} (attempt {running.attempt}, started "
            f"{running.started_at.isoformat(timespec='seconds')}) is still running and overlap "
            "is 'skip'."
        )
        started = self.now()
        fields = {
            "status": TaskRun.Status.SKIPPED,
            "started_at": started,
            "finished_at": started,
            "duration": dt.timedelta(0),
            "error_message": reason,
        }
        run = self._insert(**fields) if self.run_id is None else self._claim(**fields)
        if run is not None:
            logger.info("Task %r: %s", self.task.name, reason)
            send_signal(signals.task_skipped, run, self.task)
        return run

    def _claim(self, **fields: Any) -> TaskRun | None:
        """Turn the ``queued`` row written when the run was sent into this attempt's row.

        The UPDATE takes the place of the INSERT (the same statement count). A row no longer
        queued was cancelled: its attempt does not run. A row that is gone (deleted, pruned)
        is written again.
        """
        run_id = self.run_id
        assert run_id is not None  # only a run written as queued is claimed
        values = {key: value for key, value in self.base.items() if key != "scheduled_task"}
        values.update(fields)

        def claim() -> int:
            queued = TaskRun.objects.filter(pk=run_id, status=TaskRun.Status.QUEUED)
            if values["status"] not in rollups.COUNTED_STATUSES:
                return queued.update(**values)
            with transaction.atomic():  # a skipped or refused run is counted with its row
                claimed = queued.update(**values)
                if claimed:
                    rollups.record(TaskRun(pk=run_id, scheduled_task=self.task, **values))
                return claimed

        try:
            claimed = with_reconnect(
                claim, what=f"starting queued run {run_id} of {self.task.name!r}"
            )
            if claimed:
                return TaskRun(pk=run_id, scheduled_task=self.task, **values)
            current = with_reconnect(
                lambda: TaskRun.objects.filter(pk=run_id).first(),
                what=f"reading queued run {run_id} of {self.task.name!r}",
            )
        except CONNECTION_ERRORS as err:
            raise DatabaseUnavailable(f"starting queued run {run_id}: {err}") from err
        if current is None:
            self.run_id = None
            return self._insert(**fields)
        logger.info(
            "Queued run %s of task %r is %s; not running it",
            current.pk,
            self.task.name,
            current.status,
        )
        return current

    def without_call(
        self, status: str, message: str, signal: Signal, *, error_type: str = ""
    ) -> RunOutcome:
        """Record a run whose function is not called (skipped, or refused), and signal it."""
        started = self.now()
        fields = {
            "status": status,
            "started_at": started,
            "finished_at": started,
            "duration": dt.timedelta(0),
            "error_type": error_type,
            "error_message": truncate(message, conf.MAX_ERROR_CHARS),
        }
        run = self._insert(**fields) if self.run_id is None else self._claim(**fields)
        if run is None:
            return RunOutcome(Action.DROP, scheduled_task=self.task)
        if run.status != status:  # its queued row was cancelled meanwhile
            return RunOutcome(Action.DONE, run, self.task)
        if status == TaskRun.Status.FAILED:
            logger.error("Task %r not run: %s", self.task.name, run.error_message)
            _record_final(run, self.task)
        else:
            logger.info("%s (attempt %s)", message, run.attempt)
        send_signal(signal, run, self.task)
        if status == TaskRun.Status.FAILED:
            trip_circuit_breaker(run, self.task)
        return RunOutcome(Action.DONE, run, self.task)

    def _insert(self, **fields: Any) -> TaskRun | None:
        """Insert a run; None if a live run of the same task, tick and attempt already exists.

        The insert is tried again on a fresh connection after a connection error. The error may
        have come after the server committed it: a later try then looks for that row (same
        task, attempt, Celery id and start time) and takes it as its own rather than inserting
        it twice or mistaking it for a duplicate.
        """
        base = self.base
        tries = 0

        def insert() -> TaskRun:
            nonlocal tries
            tries += 1
            if tries > 1 and base["celery_task_id"]:
                committed = TaskRun.objects.filter(
                    scheduled_task=self.task,
                    attempt=base["attempt"],
                    celery_task_id=base["celery_task_id"],
                    started_at=fields["started_at"],
                ).first()
                if committed is not None:
                    return committed
            if fields["status"] in rollups.COUNTED_STATUSES:
                # A run that ends as it is written (skipped, refused) is counted with its row.
                with transaction.atomic():
                    run = _INSERT_RUN.create(**base, **fields)
                    rollups.record(run)
                    return run
            if base["tick_key"] is not None and connection.in_atomic_block:
                # A caller's transaction survives the duplicate only through a savepoint.
                # Workers run in autocommit, where a failed INSERT costs nothing more.
                with transaction.atomic():
                    return _INSERT_RUN.create(**base, **fields)
            return _INSERT_RUN.create(**base, **fields)

        name, number = self.task.name, base["attempt"]
        try:
            return with_reconnect(
                insert, what=f"recording task {name!r} attempt {number} as {fields['status']}"
            )
        except IntegrityError as err:
            if base["tick_key"] is None or "tick_key" not in str(err):
                raise
        except CONNECTION_ERRORS as err:
            # Nothing is called without a row to record it in: the attempt stops here, and its
            # message is delivered again (DatabaseUnavailable).
            logger.error(
                "Could not record task %r attempt %s as %s (Celery id %s); the database is "
                "unreachable and the function was not called",
                name,
                number,
                fields["status"],
                base["celery_task_id"] or "-",
            )
            raise DatabaseUnavailable(f"recording task {name!r} attempt {number}: {err}") from err
        logger.warning(
            "Task %r attempt %s for the tick of %s already has a run; dropping this duplicate "
            "(Celery id %s)",
            name,
            number,
            base["scheduled_for"].isoformat(),
            base["celery_task_id"] or "-",
        )
        return None


def _succeeded(
    run: TaskRun, task: ScheduledTask, value: Any, now: Now, kwargs: dict[str, Any]
) -> RunOutcome:
    _finish_timing(run, now())
    run.status = TaskRun.Status.SUCCEEDED
    run.result = storable_result(value, kwargs)
    previous = previous_final_status(task)
    # The log rides in the same UPDATE: a successful attempt stays at three statements.
    if not _save_outcome(run, task, ["status", "finished_at", "duration", "result", "log"]):
        return RunOutcome(Action.DONE, run, task)
    # DEBUG: Celery's worker already logs every success at INFO, with its run time.
    logger.debug("Task %r attempt %s succeeded", task.name, run.attempt)
    send_signal(signals.task_succeeded, run, task)
    if previous in TaskRun.FINAL_FAILURE_STATUSES:
        send_signal(signals.task_recovered, run, task)
    return RunOutcome(Action.DONE, run, task)


def storable_result(value: Any, kwargs: Any) -> Any:
    """``value`` as stored in ``TaskRun.result``: JSON, secrets masked, then bounded (masked
    before the cut, so a cut never leaves the start of a secret in clear)."""
    if value is None or isinstance(value, bool | int | float):
        return json_safe_result(value, conf.MAX_RESULT_CHARS)
    whole = json_safe_result(value, sys.maxsize)
    return json_safe_result(redact_run_result(whole, kwargs), conf.MAX_RESULT_CHARS)


def _failed(
    run: TaskRun,
    task: ScheduledTask,
    policy: RetryPolicy,
    exc: Exception,
    trace: str,
    now: Now,
    kwargs: dict[str, Any],
) -> RunOutcome:
    _finish_timing(run, now())
    run.error_type = error_type(exc)
    # Masked before the cut, so a cut never leaves the start of a secret in clear.
    message = redact_run_text(error_message(exc, sys.maxsize), kwargs)
    run.error_message = truncate(message, conf.MAX_ERROR_CHARS)
    run.traceback = truncate(redact_run_text(trace, kwargs), conf.MAX_TRACEBACK_CHARS, keep="tail")
    fields = [
        "status",
        "finished_at",
        "duration",
        "error_type",
        "error_message",
        "traceback",
        "log",
    ]
    decision = policy.decide(run.attempt, exception_names(type(exc)))
    if decision.retry:
        run.status = TaskRun.Status.RETRIED
        assert run.finished_at is not None  # set by _finish_timing above
        run.next_retry_at = run.finished_at + dt.timedelta(seconds=decision.countdown)
        if not _save_outcome(run, task, [*fields, "next_retry_at"]):
            return RunOutcome(Action.DONE, run, task)
        logger.warning(
            "Task %r attempt %s of %s failed (%s: %s); retrying in %.1f s",
            task.name,
            run.attempt,
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
    run.note = decision.reason
    if not _save_outcome(run, task, [*fields, "note"]):
        return RunOutcome(Action.DONE, run, task)
    logger.error(
        "Task %r failed for good at attempt %s of %s (%s: %s)%s",
        task.name,
        run.attempt,
        policy.max_attempts,
        run.error_type,
        run.error_message[:200],
        f"; {decision.reason}" if decision.reason else "",
    )
    send_signal(signals.task_failed, run, task)
    trip_circuit_breaker(run, task)
    return RunOutcome(Action.DONE, run, task)


def _finish_timing(run: TaskRun, finished: dt.datetime) -> None:
    run.finished_at = finished
    run.duration = finished - run.started_at


def task_state(task: ScheduledTask) -> TaskState | None:
    """The task's state as loaded with it (None for a task that never ended a run)."""
    try:
        return task.state
    except TaskState.DoesNotExist:
        return None


def previous_final_status(task: ScheduledTask) -> str:
    """The status of the task's last run that ended for good, as loaded with the task."""
    state = task_state(task)
    return state.last_final_status if state is not None else ""


def _state_changes(run: TaskRun, task: ScheduledTask) -> bool:
    """Whether ``run``'s outcome changes the task's state (a success after a success does not)."""
    if run.status == TaskRun.Status.SUCCEEDED:
        state = task_state(task)
        return state is None or (
            state.last_final_status != TaskRun.Status.SUCCEEDED or state.consecutive_failures != 0
        )
    return run.is_final_failure


def _save_outcome(run: TaskRun, task: ScheduledTask, update_fields: list[str]) -> bool:
    """Write the outcome held in ``run``, with the task's state when it changes; False when the
    run was cancelled while it ran (its outcome is discarded, ``run`` says ``cancelled``).

    The row, its count in the aggregates (:mod:`orchestrator.rollups`) and the state commit
    together (one transaction, one flush to disk). The UPDATE is
    conditional on the row still running, which is how a cancel wins. The function has run by
    now, so its outcome must not vanish with the connection: if the database stays unreachable,
    the ERROR line carries what the row would have said (never the result or the kwargs, which
    may hold data the logs must not), and the caller goes on as if it had been written
    (signals, retry), leaving the row ``running`` in the database.
    """
    changes_state = _state_changes(run, task)
    values = {name: getattr(run, name) for name in update_fields}
    running = TaskRun.Status.RUNNING

    def write() -> int:
        if not changes_state:
            return rollups.update_and_record(run, values, only_if_status=running)
        with transaction.atomic():
            written = rollups.update_and_record(run, values, only_if_status=running)
            if written:
                TaskState.objects.record(run)
            return written

    try:
        written = with_reconnect(
            write, what=f"recording task {task.name!r} attempt {run.attempt} as {run.status}"
        )
    except CONNECTION_ERRORS as err:
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
        return True
    if written:
        return True
    logger.warning(
        "Task %r attempt %s was cancelled while it ran; its outcome (%s) is discarded",
        task.name,
        run.attempt,
        run.status,
    )
    run.status = TaskRun.Status.CANCELLED
    return False


def _record_final(run: TaskRun, task: ScheduledTask) -> None:
    """Record a final outcome written without :func:`_save_outcome` in the task's state."""
    if run.is_final_failure or run.status == TaskRun.Status.SUCCEEDED:
        with_reconnect(
            lambda: TaskState.objects.record(run), what=f"recording the state of {task.name!r}"
        )


def trip_circuit_breaker(run: TaskRun, task: ScheduledTask) -> bool:
    """Pause ``task`` once ``pause_after_failures`` final failures came in a row; say whether
    it did. The pause is the system's (in the change history) and sends ``task_paused``."""
    limit = task.pause_after_failures
    if not limit or task.paused:
        return False
    failures = (
        TaskState.objects.filter(pk=task.pk).values_list("consecutive_failures", flat=True).first()
    )
    if not failures or failures < limit:
        return False
    reason = f"paused after {failures} consecutive failures"
    # Read again: the task may have been paused or edited since this run loaded it.
    current = ScheduledTask.objects.filter(pk=task.pk).first()
    if current is None or current.paused:
        return False
    current.pause(reason, source=history.Source.SYSTEM)
    logger.error("Task %r %s (its circuit breaker)", task.name, reason)
    send_signal(signals.task_paused, run, current)
    return True


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


# --- attempts that ended without the dispatcher -------------------------------------------------


def set_lost(runs: list[TaskRun], message: str, error_type: str, finished: dt.datetime) -> None:
    """Mark ``runs`` (still ``running``) as ``lost``; they step out of the tick guard."""
    for run in runs:
        run.status = TaskRun.Status.LOST
        run.finished_at = finished
        run.duration = max(finished - run.started_at, dt.timedelta(0))
        run.error_type = error_type[:255]
        run.error_message = truncate(message, conf.MAX_ERROR_CHARS)
        run.tick_key = None
    if runs:
        with transaction.atomic():
            TaskRun.objects.bulk_update(
                runs,
                ["status", "finished_at", "duration", "error_type", "error_message", "tick_key"],
            )
            rollups.record(runs)


def mark_lost(
    celery_task_id: str, message: str, *, error_type: str = "", now: Now = timezone.now
) -> list[TaskRun]:
    """Mark the ``running`` rows of Celery task ``celery_task_id`` as ``lost``; return them.

    For attempts whose code never got to record an outcome: the worker process was killed at
    its time limit, the task was revoked with ``terminate=True``, or the worker died.
    """
    runs = list(
        TaskRun.objects.filter(celery_task_id=celery_task_id, status=TaskRun.Status.RUNNING)
    )
    set_lost(runs, message, error_type, now())
    return runs


def mark_queued_expired(celery_task_id: str, now: Now = timezone.now) -> int:
    """Mark the queued run of Celery task ``celery_task_id`` lost: its message expired before a
    worker started it. Return how many rows changed (0 or 1)."""
    if not celery_task_id:
        return 0
    changed = 0
    for run in TaskRun.objects.filter(celery_task_id=celery_task_id, status=TaskRun.Status.QUEUED):
        fields = {
            "status": TaskRun.Status.LOST,
            "finished_at": now(),
            "error_type": "Expired",
            "error_message": "Never started: the message expired before a worker took it.",
        }
        changed += lost_from(run, TaskRun.Status.QUEUED, fields)
    return changed


def lost_from(run: TaskRun, status: str, fields: dict[str, Any]) -> int:
    """Write ``fields`` (a final status) over ``run`` if it is still in ``status``, and count it
    in the aggregates in the same transaction; return 1 if it changed, else 0."""
    with transaction.atomic():
        if not TaskRun.objects.filter(pk=run.pk, status=status).update(**fields):
            return 0
        for name, value in fields.items():
            setattr(run, name, value)
        rollups.record(run)
    return 1


def report_final_failure(run: TaskRun, task: ScheduledTask) -> None:
    """A lost attempt that nothing will retry: record it in the task's state and send
    ``task_failed``, so it is alerted like any final failure (and counted by the circuit
    breaker)."""
    _record_final(run, task)
    send_signal(signals.task_failed, run, task)
    trip_circuit_breaker(run, task)


def mark_retry_sent(run: TaskRun, now: Now = timezone.now) -> None:
    """Record that the retry following ``run`` was handed to the broker.

    A dropped connection is tried again: an unrecorded send makes the maintenance pass send the
    retry a second time. A failure to write it in the end is logged, never raised: the retry is
    on its way either way, and raising here would fail an attempt whose outcome is recorded.
    """
    try:
        with_reconnect(
            lambda: TaskRun.objects.filter(pk=run.pk).update(retry_sent_at=now()),
            what=f"recording the retry of run {run.pk} as sent",
        )
    except DatabaseError:
        logger.exception("Could not record the retry of run %s as sent", run.pk)


# --- sending ------------------------------------------------------------------------------------


def enqueue(
    task: ScheduledTask,
    trigger: str = TaskRun.Trigger.MANUAL,
    *,
    task_id: str | None = None,
    run_id: int | None = None,
    kwargs_override: dict[str, Any] | None = None,
    triggered_by: int | None = None,
) -> AsyncResult[Any]:
    """Send a run of ``task`` to the workers now, with its queue, priority, expiry and limit.

    The message is the one beat sends (``args=[task.pk]``) plus the trigger, and for a manual
    run its queued row, its kwargs and who sent it (see :class:`Attempt`), so the worker
    handles manual and scheduled runs alike. :func:`orchestrator.operations.run_now` is the
    operation every edge calls; it writes the queued row first.
    """
    options = message_options(task)
    if task_id is not None:
        options["task_id"] = task_id
    return send_task_message(
        RUN_SCHEDULED_TASK,
        args=[task.pk],
        kwargs=message_kwargs(trigger, None, run_id, kwargs_override, triggered_by),
        **options,
    )


def message_kwargs(
    trigger: str,
    scheduled_for: dt.datetime | None = None,
    run_id: int | None = None,
    kwargs_override: dict[str, Any] | None = None,
    triggered_by: int | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``orchestrator.run_scheduled_task`` for one attempt; what is
    empty is left out, so beat's messages and older ones read the same."""
    kwargs: dict[str, Any] = {"trigger": str(trigger)}
    if scheduled_for is not None:
        kwargs["scheduled_for"] = scheduled_for.isoformat()
    if run_id is not None:
        kwargs["run_id"] = run_id
    if kwargs_override is not None:
        kwargs["kwargs_override"] = kwargs_override
    if triggered_by is not None:
        kwargs["triggered_by"] = triggered_by
    return kwargs
