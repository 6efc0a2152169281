"""Missed ticks found from the schedule and the history, coalesced, alerted once."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from orchestrator import signals
from orchestrator.models import ScheduledTask, TaskRun, TaskState
from orchestrator.watchdog import missed
from tests.utils import make_run, make_scheduled_task

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
GRACE = dt.timedelta(seconds=120)


def minute(n: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


@pytest.fixture
def task() -> ScheduledTask:
    task = make_scheduled_task("every-minute", cron="* * * * *")
    ScheduledTask.objects.filter(pk=task.pk).update(created_at=T0 - dt.timedelta(days=1))
    task.refresh_from_db()
    return task


@pytest.fixture
def missed_signals() -> Any:
    received: list[TaskRun] = []

    def receiver(sender: Any, run: TaskRun, **kwargs: Any) -> None:
        received.append(run)

    signals.task_missed.connect(receiver, weak=False)
    yield received
    signals.task_missed.disconnect(receiver)


def check(at: dt.datetime, previous: dt.datetime | None) -> missed.MissedReport:
    return missed.check(at, previous)


def test_the_first_pass_only_sets_the_baseline(task: ScheduledTask) -> None:
    report = check(minute(10), None)
    assert (report.ticks_checked, TaskRun.objects.count()) == (0, 0)


def test_ticks_with_a_run_are_fine_and_those_without_are_missed_after_the_grace(
    task: ScheduledTask, missed_signals: list
) -> None:
    make_run(task, status="succeeded", scheduled_for=minute(1))
    make_run(task, status="skipped", scheduled_for=minute(2))  # a paused tick still ran
    # Window: ticks in (minute 0, minute 4] once their 120 s of grace are over.
    report = check(minute(6), minute(2))

    assert (report.ticks_checked, report.ticks_missed) == (4, 2)
    (row,) = TaskRun.objects.filter(status=TaskRun.Status.MISSED)
    assert (row.scheduled_for, row.missed_until, row.missed_count) == (minute(3), minute(4), 2)
    assert row.note == (
        "2 ticks from 2026-03-01 12:03 UTC to 2026-03-01 12:04 UTC had no run within 120 s of each"
    )
    assert missed_signals == [row]


def test_a_long_outage_is_one_row_extended_pass_after_pass_and_alerted_once(
    task: ScheduledTask, missed_signals: list
) -> None:
    for n in range(2, 60, 2):  # a pass every two minutes for an hour, beat down throughout
        check(minute(n + 2), minute(n))
    (row,) = TaskRun.objects.filter(status=TaskRun.Status.MISSED)
    assert (row.scheduled_for, row.missed_until) == (minute(1), minute(58))
    assert row.missed_count == 58
    assert len(missed_signals) == 1


def test_a_run_between_two_outages_starts_a_new_row(
    task: ScheduledTask, missed_signals: list
) -> None:
    check(minute(4), minute(2))  # ticks 1 and 2 missed
    make_run(task, scheduled_for=minute(3))
    check(minute(7), minute(4))  # tick 3 ran; 4 and 5 missed
    rows = list(TaskRun.objects.filter(status=TaskRun.Status.MISSED).order_by("scheduled_for"))
    assert [(r.scheduled_for, r.missed_count) for r in rows] == [(minute(1), 2), (minute(4), 2)]
    assert len(missed_signals) == 2


def test_a_pass_done_twice_records_nothing_twice(task: ScheduledTask) -> None:
    check(minute(5), minute(2))
    check(minute(5), minute(2))
    (row,) = TaskRun.objects.filter(status=TaskRun.Status.MISSED)
    assert row.missed_count == 3


def test_disabled_and_paused_tasks_are_not_expected_to_run(task: ScheduledTask) -> None:
    from django.utils import timezone

    ScheduledTask.objects.filter(pk=task.pk).update(enabled=False)
    paused = make_scheduled_task("paused", cron="* * * * *")
    ScheduledTask.objects.filter(pk=paused.pk).update(created_at=T0 - dt.timedelta(days=1))
    paused.pause("window", until=timezone.now() + dt.timedelta(days=365))
    check(minute(10), minute(2))
    assert not TaskRun.objects.filter(status=TaskRun.Status.MISSED).exists()
    # Enabled again: the ticks of its quiet time are never judged.
    ScheduledTask.objects.filter(pk=task.pk).update(enabled=True)
    check(minute(12), minute(10))
    assert not TaskRun.objects.filter(status=TaskRun.Status.MISSED, scheduled_task=task).exists()
    assert TaskState.objects.get(pk=task.pk).missed_checked_until == minute(10)


def test_each_task_has_its_own_grace(task: ScheduledTask) -> None:
    ScheduledTask.objects.filter(pk=task.pk).update(missed_grace=600)
    check(minute(6), minute(2))
    # Ticks are judged 10 minutes after: the pass looked at 11:53 to 11:56, not at 12:01 on.
    (row,) = TaskRun.objects.filter(status=TaskRun.Status.MISSED)
    assert (row.scheduled_for, row.missed_until) == (minute(-7), minute(-4))


def test_a_pass_costs_the_same_queries_whatever_the_history(
    django_assert_num_queries: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The alerts a missed row sends cost their own queries; the pass itself is counted here.
    monkeypatch.setattr(signals.task_missed, "receivers", [])
    tasks = []
    for n in range(30):
        t = make_scheduled_task(f"t{n}", cron="* * * * *")
        ScheduledTask.objects.filter(pk=t.pk).update(created_at=T0 - dt.timedelta(days=1))
        tasks.append(t)
    # tasks, the quiet tasks' state (none), the runs of the window, the open missed rows,
    # the new rows and the extended ones (SAVEPOINT and RELEASE around them in a test), and
    # their count in the per-task aggregates (one statement for all of them).
    with django_assert_num_queries(7):
        assert check(minute(6), minute(2)).rows_created == 30
    TaskRun.objects.bulk_create(
        TaskRun(scheduled_task=t, status="succeeded", scheduled_for=minute(-n))
        for t in tasks
        for n in range(1, 200)
    )
    with django_assert_num_queries(7):
        assert check(minute(8), minute(6)).rows_extended == 30


def test_many_tasks_missing_at_once_are_written_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # bulk_update's CASE over every row of one statement costs rows x rows: 10,000 tasks missing
    # the same ticks made one UPDATE that ran for minutes. Rows alike share plain UPDATEs.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    monkeypatch.setattr(signals.task_missed, "receivers", [])
    monkeypatch.setattr(missed, "WRITE_BATCH", 10)
    for n in range(25):
        t = make_scheduled_task(f"t{n}", cron="* * * * *")
        ScheduledTask.objects.filter(pk=t.pk).update(created_at=T0 - dt.timedelta(days=1))
    with CaptureQueriesContext(connection) as first:
        assert check(minute(6), minute(2)).rows_created == 25
    with CaptureQueriesContext(connection) as second:
        assert check(minute(8), minute(6)).rows_extended == 25

    table = connection.ops.quote_name(TaskRun._meta.db_table)
    inserts = [
        q["sql"] for q in first.captured_queries if q["sql"].startswith(f"INSERT INTO {table}")
    ]
    updates = [q["sql"] for q in second.captured_queries if q["sql"].startswith(f"UPDATE {table}")]
    assert len(inserts) == 3
    assert len(updates) == 3
    assert not any("CASE" in s for s in updates)
    assert TaskRun.objects.filter(status=TaskRun.Status.MISSED, missed_count=6).count() == 25
