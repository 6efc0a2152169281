"""The per-task aggregates stay equal to a count of the raw history, whatever happens to runs."""

from __future__ import annotations

import datetime as dt
from typing import Any
from unittest import mock

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Count
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from freezegun import freeze_time

from orchestrator import dispatcher, maintenance, operations, rollups
from orchestrator.dispatcher import Attempt, run_task
from orchestrator.models import (
    AlertCount,
    NotificationDelivery,
    RetiredRunCount,
    TaskRun,
    TaskRunRollup,
)
from orchestrator.watchdog import missed
from tests.utils import make_channel, make_run, make_scheduled_task, make_user

pytestmark = pytest.mark.django_db

ROW_FIELDS = ("scheduled_task_id", "status", "hour", *rollups.COUNTER_COLUMNS, "last_started_at")


def stored() -> dict[tuple[int, str, dt.datetime], dict[str, Any]]:
    """The aggregate rows, by task, status and hour (rows left at zero are left out)."""
    rows = {}
    for row in TaskRunRollup.objects.values(*ROW_FIELDS):
        if row["runs"] == 0 and not any(row[c] for c in rollups.COUNTER_COLUMNS):
            continue
        rows[(row["scheduled_task_id"], row["status"], row["hour"])] = row
    return rows


def counted_from_history() -> dict[tuple[int, str, dt.datetime], dict[str, Any]]:
    """What the aggregates must say, computed in Python from every row of the history."""
    totals: dict[tuple[int, str, dt.datetime], dict[str, Any]] = {}
    for run in TaskRun.objects.filter(status__in=rollups.COUNTED_STATUSES):
        delta = rollups.delta_of(run)
        key = (delta.scheduled_task_id, delta.status, delta.hour)
        row = totals.setdefault(
            key,
            {"scheduled_task_id": key[0], "status": key[1], "hour": key[2]}
            | dict.fromkeys(rollups.COUNTER_COLUMNS, 0)
            | {"last_started_at": None},
        )
        for name, value in delta.counters.items():
            row[name] += value
        if row["last_started_at"] is None or run.started_at > row["last_started_at"]:
            row["last_started_at"] = run.started_at
    return totals


def grouped_counts() -> dict[tuple[int, str], int]:
    """COUNT(*) per task and status straight from the history, by the database."""
    rows = (
        TaskRun.objects.filter(status__in=rollups.COUNTED_STATUSES)
        .values("scheduled_task_id", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {(r["scheduled_task_id"], r["status"]): r["n"] for r in rows}


def assert_exact() -> None:
    assert stored() == counted_from_history()
    per_status: dict[tuple[int, str], int] = {}
    for (task_id, status, _), row in stored().items():
        per_status[(task_id, status)] = per_status.get((task_id, status), 0) + row["runs"]
    assert per_status == grouped_counts()


@pytest.fixture
def revoke() -> Any:
    with mock.patch("celery.current_app.control.revoke") as revoke:
        yield revoke


def test_the_aggregates_match_the_history_after_everything_that_happens_to_runs(
    revoke: Any, django_capture_on_commit_callbacks: Any, admin_client: Any
) -> None:
    # Tomorrow, two minutes before an hour: after the tasks were created (the watchdog judges
    # only their ticks), and the runs fall on both sides of the hour.
    start = (timezone.now() + dt.timedelta(days=1)).replace(minute=58, second=0, microsecond=0)
    ok = make_scheduled_task("ok", "tests.sample_tasks.add", kwargs={"a": 1, "b": 2})
    flaky = make_scheduled_task("flaky", "tests.sample_tasks.always_fails", max_retries=2)
    off = make_scheduled_task("off", "tests.sample_tasks.noop", enabled=False)
    slow = make_scheduled_task("slow", "tests.sample_tasks.noop", time_limit=10)

    with freeze_time(start) as clock:
        # Successes on both sides of an hour boundary.
        for _ in range(3):
            run_task(Attempt(ok.pk, celery_task_id="ok"))
            clock.tick(dt.timedelta(minutes=1))
        # Retries, then the final failure.
        for number in (1, 2, 3):
            run_task(Attempt(flaky.pk, number=number, celery_task_id="flaky"))
        # A skip, and a refused run counted as failed.
        run_task(Attempt(off.pk))
        # A run lost by its worker, then delivered again and run.
        running = TaskRun.objects.create(
            scheduled_task=ok, status=TaskRun.Status.RUNNING, celery_task_id="again"
        )
        run_task(Attempt(ok.pk, celery_task_id="again", redelivered=True))
        # Lost at its time limit (the worker's task_failure signal).
        TaskRun.objects.create(
            scheduled_task=slow, status=TaskRun.Status.RUNNING, celery_task_id="k"
        )
        dispatcher.mark_lost("k", "killed at its time limit", error_type="TimeLimitExceeded")
        # Stuck, found by maintenance; a manual run queued too long; one whose message expired.
        stuck = TaskRun.objects.create(
            scheduled_task=slow, status=TaskRun.Status.RUNNING, time_limit=10
        )
        TaskRun.objects.create(scheduled_task=ok, status=TaskRun.Status.QUEUED)
        TaskRun.objects.create(scheduled_task=ok, status=TaskRun.Status.QUEUED, celery_task_id="e")
        dispatcher.mark_queued_expired("e")
        clock.tick(dt.timedelta(hours=7))
        report = maintenance.run_maintenance()
        assert (report.runs_lost, report.queued_runs_lost) == (1, 1)
        # Cancels: a queued manual run, a running one, and a retry waiting (retried -> cancelled).
        with (
            mock.patch("orchestrator.dispatcher.enqueue"),
            django_capture_on_commit_callbacks(execute=True),
        ):
            ok.run_now()
        queued = TaskRun.objects.get(status=TaskRun.Status.QUEUED)
        assert operations.cancel(queued)
        waiting = TaskRun.objects.create(
            scheduled_task=ok, status=TaskRun.Status.RUNNING, celery_task_id="r"
        )
        run_task(Attempt(flaky.pk, celery_task_id="r2"))  # a new retried attempt
        retried = TaskRun.objects.get(celery_task_id="r2")
        assert retried.status == TaskRun.Status.RETRIED
        assert operations.cancel(retried)
        assert operations.cancel(waiting)
        # Missed ticks: a new missed row, then the same row extended.
        now = timezone.now()
        missed.check(now, now - dt.timedelta(minutes=10))
        clock.tick(dt.timedelta(minutes=3))
        missed.check(timezone.now(), now)
    assert TaskRun.objects.filter(status=TaskRun.Status.MISSED, missed_count__gt=1).exists()
    assert running.pk and stuck.pk
    assert_exact()

    # Deletions: forget_runs before a delete, and the admin's delete action.
    doomed = TaskRun.objects.filter(scheduled_task=ok, status=TaskRun.Status.SUCCEEDED)[:2]
    ids = [run.pk for run in doomed]
    counted = rollups.forget_runs(ids)
    TaskRun.objects.filter(pk__in=ids).delete()
    assert counted == 2
    assert_exact()
    flaky_runs = list(TaskRun.objects.filter(scheduled_task=flaky).values_list("pk", flat=True))
    response = admin_client.post(
        reverse("admin:orchestrator_taskrun_changelist"),
        {"action": "delete_selected", "_selected_action": flaky_runs, "post": "yes"},
    )
    assert response.status_code == 302
    assert not TaskRun.objects.filter(scheduled_task=flaky).exists()
    assert_exact()
    # What was deleted is kept aside for the metrics' counters.
    deleted = {
        (row.scheduled_task_id, row.status): row.runs for row in RetiredRunCount.objects.all()
    }
    assert deleted[(ok.pk, TaskRun.Status.SUCCEEDED)] == 2
    assert deleted[(flaky.pk, TaskRun.Status.FAILED)] == 1

    # A rebuild from the history finds the same rows.
    before = stored()
    rollups.rebuild()
    assert stored() == before


def test_rebuild_counts_a_history_written_around_the_aggregates() -> None:
    task = make_scheduled_task("bulk", "tests.sample_tasks.noop")
    at = dt.datetime(2026, 3, 1, 10, 15, tzinfo=dt.UTC)
    TaskRun.objects.bulk_create(
        [
            TaskRun(
                scheduled_task=task,
                status=status,
                started_at=at + dt.timedelta(minutes=20 * i),
                duration=dt.timedelta(seconds=i * 7),
            )
            for i, status in enumerate(["succeeded", "failed", "succeeded", "running", "lost"])
        ]
    )
    assert not TaskRunRollup.objects.exists()

    written = rollups.rebuild([task.pk])

    # succeeded and failed in the first hour, lost in the second; running is not counted yet.
    assert written == len(stored()) == 3
    assert_exact()
    first_hour = TaskRunRollup.objects.get(status="succeeded", hour=at.replace(minute=0))
    assert (first_hour.runs, first_hour.timed, first_hour.duration_us) == (2, 2, 14_000_000)
    assert (first_hour.le_100ms, first_hour.le_10s, first_hour.le_30s) == (1, 1, 2)


def test_the_rebuild_command_recomputes_every_task(capsys: Any) -> None:
    task = make_scheduled_task("bulk", "tests.sample_tasks.noop")
    TaskRun.objects.create(scheduled_task=task, status=TaskRun.Status.SUCCEEDED)

    call_command("orchestrator_rebuild_rollups")

    assert TaskRunRollup.objects.get().runs == 1
    assert "1 aggregate row" in capsys.readouterr().out


def test_forget_runs_of_nothing_counted_changes_nothing() -> None:
    task = make_scheduled_task("bulk", "tests.sample_tasks.noop")
    running = TaskRun.objects.create(scheduled_task=task, status=TaskRun.Status.RUNNING)

    assert rollups.forget_runs([running.pk]) == 0
    assert rollups.forget_runs([]) == 0
    assert not RetiredRunCount.objects.exists()


def test_forget_runs_gives_the_hour_its_latest_remaining_start() -> None:
    task = make_scheduled_task("ok", "tests.sample_tasks.add", kwargs={"a": 1, "b": 2})
    with freeze_time("2026-03-01 10:05") as clock:
        run_task(Attempt(task.pk))
        clock.tick(dt.timedelta(minutes=10))
        last = run_task(Attempt(task.pk)).run
    assert last is not None

    rollups.forget_runs([last.pk])
    TaskRun.objects.filter(pk=last.pk).delete()

    row = TaskRunRollup.objects.get()
    assert row.runs == 1
    assert row.last_started_at == dt.datetime(2026, 3, 1, 10, 5, tzinfo=dt.UTC)


@pytest.mark.django_db(transaction=True)
def test_the_add_is_atomic_for_writers_of_the_same_row() -> None:
    # The same (task, status, hour) row written by many runs, each its own statement.
    task = make_scheduled_task("ok", "tests.sample_tasks.add", kwargs={"a": 1, "b": 2})
    with freeze_time("2026-03-01 10:05"):
        for _ in range(5):
            run_task(Attempt(task.pk))
    assert TaskRunRollup.objects.get().runs == 5
    assert_exact()


def test_alerts_are_counted_by_channel_event_and_result() -> None:
    channel = make_channel("ops", cooldown=3600)
    task = make_scheduled_task("flaky", "tests.sample_tasks.always_fails", max_retries=0)
    task.notification_channels.add(channel)
    with mock.patch("orchestrator.notifications.delivery.send_task_message"):
        run_task(Attempt(task.pk))
        run_task(Attempt(task.pk))  # within the cooldown: suppressed
    pending = NotificationDelivery.objects.get(status=NotificationDelivery.Status.PENDING)
    from orchestrator.notifications import delivery

    delivery.fail_delivery(
        NotificationDelivery.objects.filter(pk=pending.pk), error="gone", finished_at=None
    )

    counts = {(c.event, c.result): c.count for c in AlertCount.objects.all()}
    assert counts == {("failure", "suppressed"): 1, ("failure", "failed"): 1}


def test_a_success_writes_the_aggregates_in_one_statement_on_postgresql() -> None:
    task = make_scheduled_task("ok", "tests.sample_tasks.add", kwargs={"a": 1, "b": 2})
    with CaptureQueriesContext(connection) as queries:
        run_task(Attempt(task.pk))
    writes = [
        q["sql"] for q in queries.captured_queries if "orchestrator_taskrunrollup" in q["sql"]
    ]
    assert len(writes) == 1
    if connection.vendor == "postgresql":
        assert writes[0].startswith("WITH written AS (UPDATE")


def test_an_admin_without_delete_permission_cannot_delete_runs(client: Any) -> None:
    user = make_user("viewer", "orchestrator.view_taskrun", is_staff=True)
    client.force_login(user)
    response = client.get(reverse("admin:orchestrator_taskrun_changelist"))
    assert response.status_code == 200
    assert b"delete_selected" not in response.content


def test_a_cancelled_retry_keeps_its_retried_count_for_the_counters(revoke: Any) -> None:
    task = make_scheduled_task("flaky", "tests.sample_tasks.always_fails", max_retries=2)
    with freeze_time("2026-03-01 10:05") as clock:
        run_task(Attempt(task.pk, celery_task_id="q"))  # an earlier retried attempt stays
        clock.tick(dt.timedelta(minutes=10))
        retried = run_task(Attempt(task.pk, celery_task_id="r")).run
    assert retried is not None and retried.status == TaskRun.Status.RETRIED

    assert operations.cancel(retried)

    assert_exact()  # the aggregates follow the history: it is cancelled now
    left = TaskRunRollup.objects.get(status=TaskRun.Status.RETRIED)
    assert (left.runs, left.last_started_at) == (1, dt.datetime(2026, 3, 1, 10, 5, tzinfo=dt.UTC))
    kept = RetiredRunCount.objects.get(scheduled_task=task, status=TaskRun.Status.RETRIED)
    assert (kept.runs, kept.timed) == (1, 1)


def test_estimated_rows_comes_from_the_databases_statistics() -> None:
    task = make_scheduled_task("bulk", "tests.sample_tasks.noop")
    TaskRun.objects.bulk_create(
        TaskRun(scheduled_task=task, status=TaskRun.Status.SUCCEEDED) for _ in range(50)
    )
    if connection.vendor == "sqlite":
        assert rollups.estimated_rows(TaskRun) is None  # SQLite keeps no such estimate
        return
    if connection.vendor == "postgresql":  # MariaDB's ANALYZE TABLE would commit the test's data
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(TaskRun._meta.db_table)}")
    estimate = rollups.estimated_rows(TaskRun)
    assert estimate is not None and estimate >= 0


def test_the_aggregates_stay_exact_after_pruning() -> None:
    from orchestrator import retention

    now = timezone.now()
    old = now - dt.timedelta(days=200)
    task, other = make_scheduled_task("pruned"), make_scheduled_task("kept")
    statuses = ["succeeded", "failed", "skipped", "lost", "succeeded", "cancelled"]
    for minute, status in enumerate(statuses):
        started = old + dt.timedelta(hours=minute % 2, minutes=minute)
        make_run(task, status=status, started_at=started, finished_at=started)
        make_run(other, status=status, started_at=now - dt.timedelta(hours=minute))
    totals_before = grouped_counts()
    assert_exact()

    report = retention.prune(now=now, batch_size=2)

    assert report.runs == len(statuses) - 1  # the task's latest final run stays
    assert_exact()
    # What was pruned left the aggregates but stays in the retired counts behind the exported
    # counters, so orchestrator_runs_total never goes down.
    retired = {
        (row.scheduled_task_id, row.status): row.runs
        for row in RetiredRunCount.objects.filter(scheduled_task=task)
    }
    for (task_id, status), count in totals_before.items():
        left = grouped_counts().get((task_id, status), 0)
        assert left + retired.get((task_id, status), 0) == count


# --- the outcome's write --------------------------------------------------------------------


def ended(run: TaskRun, result: Any) -> dict[str, Any]:
    """What the dispatcher writes when ``run`` (running) succeeds with ``result``."""
    run.status = TaskRun.Status.SUCCEEDED
    run.finished_at = run.started_at + dt.timedelta(seconds=2)
    run.duration = dt.timedelta(seconds=2)
    run.result = result
    return {name: getattr(run, name) for name in ("status", "finished_at", "duration", "result")}


@pytest.mark.parametrize("result", [None, {"rows": 3, "ok": True}, [1, "two"], 0])
def test_the_outcome_is_written_as_queryset_update_writes_it(result: Any) -> None:
    task = make_scheduled_task("ends")
    run = make_run(task, status=TaskRun.Status.RUNNING, started_at=timezone.now())
    twin = make_run(task, status=TaskRun.Status.RUNNING, started_at=run.started_at)
    values = ended(run, result)

    assert rollups.update_and_record(run, values, only_if_status=TaskRun.Status.RUNNING) == 1
    TaskRun.objects.filter(pk=twin.pk).update(**values)

    fields = ("status", "finished_at", "duration", "result")
    written = TaskRun.objects.values(*fields).get(pk=run.pk)
    assert written == TaskRun.objects.values(*fields).get(pk=twin.pk)
    assert written["result"] == result
    # None is SQL NULL, as QuerySet.update() writes it, not JSON null.
    assert TaskRun.objects.filter(pk=run.pk, result__isnull=True).exists() is (result is None)
    # Counted once: the twin, written by update() alone, is not.
    assert TaskRunRollup.objects.get(status=TaskRun.Status.SUCCEEDED).runs == 1


def test_an_outcome_is_not_written_or_counted_once_the_run_left_its_status() -> None:
    task = make_scheduled_task("cancelled")
    run = make_run(task, status=TaskRun.Status.RUNNING, started_at=timezone.now())
    TaskRun.objects.filter(pk=run.pk).update(status=TaskRun.Status.CANCELLED)
    values = ended(run, None)

    assert rollups.update_and_record(run, values, only_if_status=TaskRun.Status.RUNNING) == 0
    assert TaskRun.objects.get(pk=run.pk).status == TaskRun.Status.CANCELLED
    assert TaskRunRollup.objects.filter(status=TaskRun.Status.SUCCEEDED).exists() is False


def test_the_outcomes_statement_is_built_once_per_set_of_columns() -> None:
    task = make_scheduled_task("shapes")
    rollups._update_statement.cache_clear()
    for result in (None, {"a": 1}, None, {"b": 2}):
        run = make_run(task, status=TaskRun.Status.RUNNING, started_at=timezone.now())
        rollups.update_and_record(run, ended(run, result), only_if_status=TaskRun.Status.RUNNING)
    if connection.vendor == "postgresql":
        # A NULL result and a JSON one are two statements; each is built once.
        assert rollups._update_statement.cache_info().misses == 2
        assert rollups._update_statement.cache_info().hits == 2
    assert TaskRun.objects.filter(status=TaskRun.Status.SUCCEEDED).count() == 4
