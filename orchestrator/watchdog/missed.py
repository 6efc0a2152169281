"""Ticks that had no run: found from the cron schedules and the run history, recorded as
``missed`` runs.

A pass checks, for every enabled, unpaused task, the ticks that fell due since the previous
pass, each judged once its grace period (``missed_grace``, else
``ORCHESTRATOR["MISSED_RUN_GRACE"]``) is over: a tick with a run (any run stamped with that
tick, skipped ones included) is fine, one without is missed. Consecutive missed ticks of a task
become one ``missed`` row, extended while the outage lasts, so a long one writes one row per
task, not one per tick; each new row sends ``task_missed`` (an alert through the alert policy).

A pass costs a fixed number of queries whatever the history: the tasks with their state, the
runs stamped with a tick of the window, the recent missed rows, and the writes in bulk (one
statement per :data:`WRITE_BATCH` rows alike, so one more per 500 tasks missing at once).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Q

from orchestrator import cron, rollups, signals
from orchestrator.conf import conf
from orchestrator.dispatcher import send_signal, task_state
from orchestrator.models import ScheduledTask, TaskRun, TaskState

logger = logging.getLogger(__name__)

# Ticks of one task looked at in one pass: after a long outage of the watchdog itself, the
# rest is looked at by the next passes.
MAX_TICKS_PER_TASK = 1000
# Rows written per statement (the length of an IN list, the rows of one INSERT).
WRITE_BATCH = 500


@dataclass
class MissedReport:
    tasks_checked: int = 0
    ticks_checked: int = 0
    ticks_missed: int = 0
    rows_created: int = 0
    rows_extended: int = 0
    created: list[TaskRun] = field(default_factory=list)


def grace_of(task: ScheduledTask) -> dt.timedelta:
    seconds = task.missed_grace if task.missed_grace else conf.MISSED_RUN_GRACE
    return dt.timedelta(seconds=seconds)


def check(now: dt.datetime, checked_through: dt.datetime | None) -> MissedReport:
    """Record the ticks of the window ``(checked_through - grace, now - grace]`` that have no run.

    ``checked_through`` is when the previous pass looked (None on the first pass ever, which
    only sets the baseline). Tasks that are disabled or paused now are not expected to run: their
    ``missed_checked_until`` moves to ``now``, so the ticks of their quiet time are never judged.
    """
    report = MissedReport()
    tasks = list(
        ScheduledTask.objects.select_related("task_definition", "state").only(
            "pk",
            "name",
            "cron",
            "timezone",
            "enabled",
            "paused",
            "paused_until",
            "missed_grace",
            "queue",
            "created_at",
            "task_definition__name",
            "task_definition__enabled",
            "state__missed_checked_until",
            "state__consecutive_failures",
            "state__last_final_status",
            "state__last_final_at",
        )
    )
    quiet = [t for t in tasks if not (t.is_runnable and not t.is_paused(now))]
    _mark_quiet(quiet, now)
    quiet_ids = {t.pk for t in quiet}
    if checked_through is None:
        return report
    expected: dict[int, list[dt.datetime]] = {}
    for task in tasks:
        if task.pk in quiet_ids:
            continue
        grace = grace_of(task)
        after = max(checked_through - grace, task.created_at)
        state = task_state(task)
        if state is not None and state.missed_checked_until is not None:
            after = max(after, state.missed_checked_until)
        try:
            ticks = cron.fire_times_between(
                task.cron, task.timezone, after, now - grace, MAX_TICKS_PER_TASK
            )
        except (cron.CronError, ValueError, KeyError):  # a row edited around validation
            continue
        report.tasks_checked += 1
        if ticks:
            expected[task.pk] = ticks
            report.ticks_checked += len(ticks)
    if not expected:
        return report
    first_tick = min(ticks[0] for ticks in expected.values())
    last_tick = max(ticks[-1] for ticks in expected.values())
    recorded = _recorded_ticks(first_tick, last_tick)
    missed = {
        pk: [t for t in ticks if _second(t) not in recorded[pk]] for pk, ticks in expected.items()
    }
    missed = {pk: ticks for pk, ticks in missed.items() if ticks}
    if missed:
        _record(missed, {t.pk: t for t in tasks}, now, report)
    return report


def _second(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _recorded_ticks(first: dt.datetime, last: dt.datetime) -> dict[int, set[int]]:
    """Per task, the ticks between ``first`` and ``last`` that have a run (missed rows count
    for every tick they stand for)."""
    recorded: dict[int, set[int]] = defaultdict(set)
    runs = TaskRun.objects.filter(
        Q(scheduled_for__gte=first, scheduled_for__lte=last)
        | Q(status=TaskRun.Status.MISSED, missed_until__gte=first, scheduled_for__lte=last)
    ).values_list("scheduled_task_id", "scheduled_for", "status", "missed_until")
    for task_id, tick, status, missed_until in runs:
        if tick is None:  # excluded by the filter; the column is nullable for manual runs
            continue
        if status == TaskRun.Status.MISSED and missed_until is not None:
            # Every tick from the first to the last missed one is accounted for. Ticks fall on
            # whole minutes: the row covers every whole minute of its span within the window.
            start = max(_second(tick), _second(first))
            end = min(_second(missed_until), _second(last))
            recorded[task_id].update(range(start - start % 60, end + 1, 60))
        else:
            recorded[task_id].add(_second(tick))
    return recorded


def _record(
    missed: dict[int, list[dt.datetime]],
    tasks: dict[int, ScheduledTask],
    now: dt.datetime,
    report: MissedReport,
) -> None:
    """Extend each task's open missed row when the new ticks follow it, else write a new one."""
    earliest = min(ticks[0] for ticks in missed.values())
    open_rows = {
        row.scheduled_task_id: row
        for row in TaskRun.objects.filter(
            status=TaskRun.Status.MISSED,
            scheduled_task_id__in=list(missed),
            missed_until__gte=earliest - dt.timedelta(days=1),
        ).order_by("missed_until")
    }
    to_create: list[TaskRun] = []
    to_extend: list[TaskRun] = []
    new_ticks: list[tuple[TaskRun, int]] = []
    for pk, ticks in missed.items():
        task = tasks[pk]
        report.ticks_missed += len(ticks)
        row = open_rows.get(pk)
        if row is not None and _follows(task, row.missed_until, ticks[0]):
            row.missed_until = ticks[-1]
            row.missed_count += len(ticks)
            row.finished_at = now
            first_tick = row.scheduled_for or ticks[0]  # a missed row always has its first tick
            row.note = _describe(row.missed_count, first_tick, ticks[-1], grace_of(task))
            row.error_message = row.note
            to_extend.append(row)
            new_ticks.append((row, len(ticks)))
            continue
        note = _describe(len(ticks), ticks[0], ticks[-1], grace_of(task))
        to_create.append(
            TaskRun(
                scheduled_task_id=pk,
                status=TaskRun.Status.MISSED,
                trigger=TaskRun.Trigger.SCHEDULE,
                attempt=1,
                max_attempts=1,
                started_at=ticks[0],
                finished_at=now,
                scheduled_for=ticks[0],
                missed_until=ticks[-1],
                missed_count=len(ticks),
                queue=task.queue,
                error_type="Missed",
                error_message=note,
                note=note,
            )
        )
    with transaction.atomic():
        created = TaskRun.objects.bulk_create(to_create, batch_size=WRITE_BATCH)
        _extend(to_extend, now)
        # Counted with the rows: a new row is a missed run, an extended one adds its ticks.
        rollups.record(created)
        rollups.extend_ticks(new_ticks)
    report.rows_created += len(created)
    report.rows_extended += len(to_extend)
    for run in created:
        task = tasks[run.scheduled_task_id]
        run.scheduled_task = task
        logger.error("Task %r missed: %s", task.name, run.note)
        send_signal(signals.task_missed, run, task)
    report.created.extend(created)


def _extend(rows: list[TaskRun], now: dt.datetime) -> None:
    """Write the extended missed rows: one UPDATE per set of rows that now read the same.

    Tasks on the same schedule missing the same ticks (a beat outage) read alike, so 10,000 of
    them take one statement per 500. Not Django's bulk_update: its CASE over every row costs
    rows x rows in the database, and building it about a millisecond a row in Python (10,000
    rows: 34 s in one statement, 10 s in batches of 500). A whole pass over 10,000 tasks
    missing together now takes about 5 s, most of it the cron arithmetic.
    """
    groups: dict[tuple[dt.datetime | None, int, str], list[int]] = defaultdict(list)
    for row in rows:
        groups[(row.missed_until, row.missed_count, row.note)].append(row.pk)
    for (until, count, note), pks in groups.items():
        for start in range(0, len(pks), WRITE_BATCH):
            TaskRun.objects.filter(pk__in=pks[start : start + WRITE_BATCH]).update(
                missed_until=until,
                missed_count=count,
                finished_at=now,
                note=note,
                error_message=note,
            )


def _follows(task: ScheduledTask, previous: dt.datetime | None, tick: dt.datetime) -> bool:
    """Whether ``tick`` is the next tick of ``task``'s schedule after ``previous``."""
    if previous is None:
        return False
    try:
        following = cron.next_run(task.cron, task.timezone, previous)
    except (cron.CronError, ValueError, KeyError):
        return False
    return following is not None and _second(following) == _second(tick)


def _describe(count: int, first: dt.datetime, last: dt.datetime, grace: dt.timedelta) -> str:
    when = first.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if count == 1:
        return f"the tick of {when} had no run within {int(grace.total_seconds())} s"
    until = last.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{count} ticks from {when} to {until} had no run within "
        f"{int(grace.total_seconds())} s of each"
    )


def _mark_quiet(tasks: list[ScheduledTask], now: dt.datetime) -> None:
    """Tasks not expected to run (disabled, paused): none of their ticks up to ``now`` is
    judged, now or when they run again."""
    if not tasks:
        return
    ids = [t.pk for t in tasks]
    missing = [t.pk for t in tasks if task_state(t) is None]
    if missing:
        TaskState.objects.bulk_create(
            [TaskState(scheduled_task_id=pk) for pk in missing], ignore_conflicts=True
        )
    TaskState.objects.filter(scheduled_task_id__in=ids).update(missed_checked_until=now)
