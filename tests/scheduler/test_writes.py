"""last_run_at and total_run_count written in a few statements per wake-up."""

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from orchestrator.scheduler.writes import RunWrite, disable, merge, write_runs

pytestmark = pytest.mark.django_db
UTC = dt.UTC
T1 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
T2 = T1 + dt.timedelta(minutes=1)


def rows(count: int) -> list[PeriodicTask]:
    crontab = CrontabSchedule.objects.create(minute="*", timezone="UTC")
    return PeriodicTask.objects.bulk_create(
        PeriodicTask(name=f"job-{i}", task="tests.sample_tasks.noop", crontab=crontab)
        for i in range(count)
    )


def state() -> dict[str, tuple[dt.datetime | None, int]]:
    return {
        name: (last, count)
        for name, last, count in PeriodicTask.objects.values_list(
            "name", "last_run_at", "total_run_count"
        )
    }


def test_entries_due_on_the_same_tick_are_written_with_one_statement():
    tasks = rows(300)
    with CaptureQueriesContext(connection) as queries:
        statements = write_runs(RunWrite(task.pk, T1, 1) for task in tasks)

    assert statements == len(queries) == 1
    assert set(state().values()) == {(T1, 1)}


def test_one_statement_per_distinct_tick_and_count():
    a, b, c = rows(3)
    with CaptureQueriesContext(connection) as queries:
        write_runs([RunWrite(a.pk, T1, 1), RunWrite(b.pk, T2, 1), RunWrite(c.pk, T2, 3)])

    assert len(queries) == 3
    assert state() == {"job-0": (T1, 1), "job-1": (T2, 1), "job-2": (T2, 3)}


def test_writing_the_same_batch_twice_changes_nothing_more():
    tasks = rows(3)
    batch = [RunWrite(task.pk, T1, 1) for task in tasks]
    write_runs(batch)
    write_runs(batch)  # a retry after the connection dropped once the database had committed

    assert set(state().values()) == {(T1, 1)}


def test_last_run_at_never_moves_back():
    (task,) = rows(1)
    write_runs([RunWrite(task.pk, T2, 1)])
    write_runs([RunWrite(task.pk, T1, 1)])  # a stale leader, or an old retry

    assert state()["job-0"] == (T2, 1)


def test_the_writes_are_not_a_schedule_change():
    tasks = rows(2)
    PeriodicTasks.update_changed()
    marker = PeriodicTasks.last_change()
    changed = dict(PeriodicTask.objects.values_list("pk", "date_changed"))

    write_runs([RunWrite(task.pk, T1, 1) for task in tasks])

    assert PeriodicTasks.last_change() == marker
    assert dict(PeriodicTask.objects.values_list("pk", "date_changed")) == changed


def test_merge_keeps_the_latest_tick_and_adds_the_counts():
    assert merge([RunWrite(1, T1, 1), RunWrite(2, T1, 0), RunWrite(1, T2, 2)]) == [
        RunWrite(1, T2, 3),
        RunWrite(2, T1, 0),
    ]


def test_disable_leaves_rows_as_django_celery_beat_does_and_tells_the_other_beats():
    (task,) = rows(1)
    write_runs([RunWrite(task.pk, T1, 1)])
    before = PeriodicTasks.last_change()

    assert disable([task.pk]) == 1

    task.refresh_from_db()
    assert (task.enabled, task.last_run_at, task.total_run_count) == (False, None, 0)
    assert before is None or PeriodicTasks.last_change() > before
    assert disable([]) == 0
