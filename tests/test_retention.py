"""Bounded history: what retention deletes and keeps, in batches, and the edges that call it."""

from __future__ import annotations

import datetime as dt
import io
import threading
from typing import Any
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, connections, transaction
from freezegun import freeze_time

from orchestrator import maintenance, retention
from orchestrator.models import (
    AlertState,
    Event,
    NotificationDelivery,
    ScheduledTask,
    TaskRun,
    TaskState,
)
from orchestrator.retention import Cutoffs, PrunedRun, prune
from tests.utils import make_channel, make_scheduled_task

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
RUN_CUTOFF = NOW - dt.timedelta(days=90)  # the defaults: 90 days of runs
DELIVERY_CUTOFF = NOW - dt.timedelta(days=30)  # and 30 of deliveries
OLD = RUN_CUTOFF - dt.timedelta(days=10)
RECENT = NOW - dt.timedelta(days=1)
S = TaskRun.Status


def run(task: ScheduledTask, status: str, started: dt.datetime, **fields: Any) -> TaskRun:
    """A run that started at ``started`` and (unless told otherwise) finished a minute later."""
    values: dict[str, Any] = {
        "status": status,
        "started_at": started,
        "finished_at": started + dt.timedelta(minutes=1),
    }
    values.update(fields)
    return TaskRun.objects.create(scheduled_task=task, **values)


def delivery(channel: Any, status: str, created: dt.datetime, **fields: Any) -> Any:
    return NotificationDelivery.objects.create(
        channel=channel, event=Event.FAILURE, status=status, created_at=created, **fields
    )


def remaining(labels: dict[str, int], model: Any = TaskRun) -> set[str]:
    kept = set(model.objects.filter(pk__in=labels.values()).values_list("pk", flat=True))
    return {label for label, pk in labels.items() if pk in kept}


@pytest.fixture
def history() -> dict[str, int]:
    """Runs of every kind around the cut-off, labelled by what retention must do with them."""
    busy = make_scheduled_task("busy")
    quiet = make_scheduled_task("quiet")
    flaky = make_scheduled_task("flaky")
    tied = make_scheduled_task("tied")
    channel = make_channel()
    minute = dt.timedelta(minutes=1)
    runs = {
        "delete: old success, a newer final run exists": run(busy, S.SUCCEEDED, OLD),
        "delete: old failure, a newer final run exists": run(busy, S.FAILED, OLD + minute),
        "delete: old skipped": run(busy, S.SKIPPED, OLD + 2 * minute),
        "delete: old cancelled": run(busy, S.CANCELLED, OLD + 3 * minute),
        "delete: old lost, ran again": run(
            busy, S.LOST, OLD + 4 * minute, error_type=TaskRun.WORKER_LOST
        ),
        "delete: old retried, retry sent": run(
            busy,
            S.RETRIED,
            OLD + 5 * minute,
            next_retry_at=OLD + 6 * minute,
            retry_sent_at=OLD + 6 * minute,
        ),
        "delete: old missed, closed": run(
            busy, S.MISSED, OLD + 7 * minute, missed_until=OLD + 8 * minute
        ),
        "keep: old retried, retry not sent": run(
            busy, S.RETRIED, OLD + 9 * minute, next_retry_at=OLD + 10 * minute
        ),
        "keep: old retried, retry due after the cut-off": run(
            busy,
            S.RETRIED,
            OLD + 11 * minute,
            next_retry_at=RECENT,
            retry_sent_at=OLD + 11 * minute,
        ),
        "keep: old, still running": run(busy, S.RUNNING, OLD + 12 * minute, finished_at=None),
        "keep: old, still queued": run(busy, S.QUEUED, OLD + 13 * minute, finished_at=None),
        "keep: old missed, still being extended": run(
            busy, S.MISSED, OLD + 14 * minute, finished_at=RECENT, missed_until=RECENT
        ),
        "keep: started before the cut-off, finished after it": run(
            busy, S.SUCCEEDED, RUN_CUTOFF - minute, finished_at=RUN_CUTOFF + minute
        ),
        "keep: started exactly at the cut-off": run(busy, S.SKIPPED, RUN_CUTOFF),
        "keep: recent": run(busy, S.SUCCEEDED, RECENT),
        "keep: old, alerted by a delivery still kept": run(busy, S.FAILED, OLD + 15 * minute),
        "delete: old, alerted by a delivery past its retention": run(
            busy, S.FAILED, OLD + 16 * minute
        ),
        # The task's only final runs are old: its latest one stays, whatever its age.
        "delete: quiet's older final run": run(quiet, S.FAILED, OLD),
        "keep: quiet's latest final run, however old": run(quiet, S.SUCCEEDED, OLD + minute),
        "delete: quiet's later run that did not end for good": run(
            quiet, S.SKIPPED, OLD + 2 * minute
        ),
        # A lost attempt that is a final failure (a hard time limit) is a final run.
        "delete: flaky's success before its final failure": run(flaky, S.SUCCEEDED, OLD),
        "keep: flaky's latest final run, lost at its time limit": run(
            flaky, S.LOST, OLD + minute, error_type="TimeLimitExceeded"
        ),
        "delete: flaky's revoked attempt after it": run(
            flaky, S.LOST, OLD + 2 * minute, error_type=TaskRun.REVOKED
        ),
        # Two final runs that started at the same moment: the later id is the latest.
        "delete: tied's first final run": run(tied, S.SUCCEEDED, OLD),
        "keep: tied's second final run, same start": run(tied, S.SUCCEEDED, OLD),
    }
    labels = {label: row.pk for label, row in runs.items()}
    delivery(
        channel,
        NotificationDelivery.Status.SENT,
        RECENT,
        task_run=runs["keep: old, alerted by a delivery still kept"],
    )
    delivery(
        channel,
        NotificationDelivery.Status.SENT,
        DELIVERY_CUTOFF - dt.timedelta(days=1),
        task_run=runs["delete: old, alerted by a delivery past its retention"],
    )
    for task in (busy, quiet, flaky, tied):
        TaskState.objects.rebuild(task.pk)
    return labels


def to_delete(labels: dict[str, int]) -> set[str]:
    return {label for label in labels if label.startswith("delete:")}


def test_prune_deletes_exactly_the_runs_past_retention_that_nothing_needs(history):
    report = prune(now=NOW)
    assert remaining(history) == set(history) - to_delete(history)
    assert report.runs == len(to_delete(history))
    assert report.deliveries == 1  # the delivery past its retention, before its run
    assert report.complete


def test_the_tasks_state_reads_the_same_after_pruning(history):
    before = {s.pk: (s.last_final_status, s.last_final_at) for s in TaskState.objects.all()}
    prune(now=NOW)
    for task_id in before:
        TaskState.objects.rebuild(task_id)
    after = {s.pk: (s.last_final_status, s.last_final_at) for s in TaskState.objects.all()}
    assert after == before


def test_a_dry_run_deletes_nothing_and_counts_what_prune_then_deletes(history):
    runs, deliveries = TaskRun.objects.count(), NotificationDelivery.objects.count()
    dry = prune(now=NOW, dry_run=True)
    assert (TaskRun.objects.count(), NotificationDelivery.objects.count()) == (runs, deliveries)
    assert dry.dry_run
    real = prune(now=NOW, batch_size=3)
    assert (
        dry.counts()
        == real.counts()
        == {
            "runs": len(to_delete(history)),
            "deliveries": 1,
            "alert_states": 0,
        }
    )


def test_pruning_twice_deletes_nothing_more(history):
    prune(now=NOW)
    again = prune(now=NOW)
    assert again.counts() == {"runs": 0, "deliveries": 0, "alert_states": 0}


def test_retention_none_keeps_every_run(settings, history):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "RUN_RETENTION_DAYS": None}
    report = prune(now=NOW)
    assert remaining(history) == set(history)
    assert report.runs == 0
    assert report.cutoffs.runs is None
    assert report.deliveries == 1


def test_deliveries_kept_forever_keep_the_runs_they_point_to(settings, history):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "DELIVERY_RETENTION_DAYS": None}
    prune(now=NOW)
    assert "delete: old, alerted by a delivery past its retention" in remaining(history)
    assert NotificationDelivery.objects.count() == 2


def test_deliveries_finished_before_the_cut_off_are_deleted():
    channel = make_channel()
    task = make_scheduled_task()
    old = DELIVERY_CUTOFF - dt.timedelta(seconds=1)
    status = NotificationDelivery.Status
    rows = {
        "delete: sent": delivery(channel, status.SENT, old, scheduled_task=task),
        "delete: failed": delivery(channel, status.FAILED, old),
        "delete: suppressed": delivery(channel, status.SUPPRESSED, old),
        "delete: a scheduler alert": NotificationDelivery.objects.create(
            channel=channel, event=Event.SCHEDULER, status=status.SENT, created_at=old
        ),
        "keep: pending": delivery(channel, status.PENDING, old),
        "keep: sending": delivery(channel, status.SENDING, old),
        "keep: at the cut-off": delivery(channel, status.SENT, DELIVERY_CUTOFF),
        "keep: recent": delivery(channel, status.FAILED, RECENT),
    }
    labels = {label: row.pk for label, row in rows.items()}
    report = prune(now=NOW)
    assert remaining(labels, NotificationDelivery) == {
        label for label in labels if label.startswith("keep:")
    }
    assert report.deliveries == 4


def test_alert_state_is_deleted_only_when_it_changes_nothing():
    task = make_scheduled_task()
    short = make_channel("short")
    long = make_channel("long", cooldown=40 * 86400)  # longer than the delivery retention
    old = DELIVERY_CUTOFF - dt.timedelta(days=1)

    def state(channel: Any, event: str, **fields: Any) -> int:
        return AlertState.objects.create(
            channel=channel, scheduled_task=task, event=event, **fields
        ).pk

    labels = {
        "delete: last alert before the cut-off, suppressed count long stale": state(
            short, Event.RETRY, last_sent_at=old, suppressed_count=12
        ),
        "delete: never sent (held below the threshold)": state(short, Event.MISSED),
        "keep: a recovery is owed": state(
            short, Event.FAILURE, last_sent_at=old, awaiting_recovery=True
        ),
        "keep: last alert after the cut-off": state(short, Event.PAUSED, last_sent_at=RECENT),
        "keep: the channel's cooldown reaches past the cut-off": state(
            long, Event.RETRY, last_sent_at=old, suppressed_count=3
        ),
    }
    report = prune(now=NOW)
    assert remaining(labels, AlertState) == {label for label in labels if label.startswith("keep:")}
    assert report.alert_states == 2


def test_alert_state_goes_with_its_deleted_task_and_channel():
    task = make_scheduled_task()
    channel = make_channel()
    AlertState.objects.create(channel=channel, scheduled_task=task, event=Event.FAILURE)
    other = make_channel("other")
    AlertState.objects.create(channel=other, scheduled_task=task, event=Event.RETRY)
    channel.delete()
    assert AlertState.objects.count() == 1
    task.delete()
    assert AlertState.objects.count() == 0


# --- batches ------------------------------------------------------------------------------------


def old_runs(count: int) -> list[int]:
    """``count`` old skipped runs (never final) of one task, oldest first."""
    task = make_scheduled_task("many")
    return [run(task, S.SKIPPED, OLD + dt.timedelta(minutes=i)).pk for i in range(count)]


# Per batch of runs: choose the ids; then, in a transaction (a savepoint inside the test's),
# lock and read them, and delete them (4); and, in the same transaction, take them out of the
# per-task aggregates (rollups.forget_runs: read what they counted, a savepoint, subtract, keep
# it in the retired counts, drop emptied hours, re-read the hours' latest start, release: 7).
STATEMENTS_PER_RUN_BATCH = 1 + 4 + 7
# Before the runs: one look for deliveries, one for alert state, none found.
STATEMENTS_BEFORE_RUNS = 2


@pytest.mark.parametrize(
    "count, batches, last_look",
    [
        (5, 3, 0),  # the third batch is short: nothing is left
        (8, 4, 1),  # the fourth batch is full: one more look finds nothing
    ],
)
def test_each_batch_costs_the_same_few_statements(
    count, batches, last_look, django_assert_num_queries
):
    ids = old_runs(count)
    statements = STATEMENTS_BEFORE_RUNS + batches * STATEMENTS_PER_RUN_BATCH + last_look
    with django_assert_num_queries(statements):
        report = prune(now=NOW, batch_size=2)
    assert report.runs == count
    assert report.batches == batches
    assert not TaskRun.objects.filter(pk__in=ids).exists()


def test_each_run_batch_is_deleted_through_delete_runs():
    ids = old_runs(5)
    with mock.patch.object(retention, "_delete_runs", wraps=retention._delete_runs) as delete_runs:
        prune(now=NOW, batch_size=2)
    assert [len(call.args[0]) for call in delete_runs.call_args_list] == [2, 2, 1]
    assert sorted(pk for call in delete_runs.call_args_list for pk in call.args[0]) == ids


def test_delete_runs_returns_what_it_deleted_and_keeps_a_run_that_changed_meanwhile():
    ids = old_runs(2)
    prunable = retention._run_is_prunable(Cutoffs.at(NOW), deliveries_pruned=True)
    assert prunable is not None
    TaskRun.objects.filter(pk=ids[1]).update(status=S.RUNNING)  # claimed since it was chosen
    deleted = retention._delete_runs(ids, prunable)
    task_id = TaskRun.objects.get(pk=ids[1]).scheduled_task_id
    assert deleted == [PrunedRun(ids[0], task_id, S.SKIPPED, OLD)]
    assert list(TaskRun.objects.values_list("pk", flat=True)) == [ids[1]]


@pytest.mark.django_db(transaction=True)
def test_a_run_another_transaction_is_writing_is_skipped_not_waited_for():
    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("needs SELECT ... FOR UPDATE SKIP LOCKED and two connections at once")
    ids = old_runs(3)
    locked, release = threading.Event(), threading.Event()

    def hold_a_row() -> None:
        try:
            with transaction.atomic():
                TaskRun.objects.filter(pk=ids[1]).update(note="a worker writes this run")
                locked.set()
                release.wait(timeout=30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_a_row)
    holder.start()
    try:
        assert locked.wait(timeout=10)
        report = prune(now=NOW)
    finally:
        release.set()
        holder.join(timeout=30)
    assert report.runs == 2
    assert list(TaskRun.objects.values_list("pk", flat=True)) == [ids[1]]
    assert prune(now=NOW).runs == 1  # the next pass takes it


def test_a_batch_the_database_refuses_is_left_for_the_next_pass_and_the_others_go(
    monkeypatch, caplog
):
    ids = old_runs(5)
    delete = retention._delete_run_batch
    calls = []

    def refuse_the_first(batch: list[int], prunable: Any) -> int:
        calls.append(batch)
        if len(calls) == 1:
            raise IntegrityError("a delivery refers to one of them")
        return delete(batch, prunable)

    monkeypatch.setattr(retention, "_delete_run_batch", refuse_the_first)
    report = prune(now=NOW, batch_size=2)
    assert report.runs == 3
    assert list(TaskRun.objects.order_by("pk").values_list("pk", flat=True)) == ids[:2]
    assert f"Could not prune runs {ids[0]} to {ids[1]}" in caplog.text


def test_max_rows_bounds_a_call_and_the_next_call_goes_on():
    old_runs(5)
    first = prune(now=NOW, batch_size=2, max_rows=3)
    assert (first.runs, first.batches, first.complete) == (3, 2, False)
    second = prune(now=NOW, batch_size=2)
    assert (second.runs, second.complete) == (2, True)


def test_a_time_budget_stops_between_batches(monkeypatch):
    old_runs(10)
    clock = [0.0]
    delete = retention._delete_run_batch

    def slow_batch(ids: list[int], prunable: Any) -> int:
        clock[0] += 4.0  # each batch takes 4 s
        return delete(ids, prunable)

    monkeypatch.setattr(retention, "_delete_run_batch", slow_batch)
    report = prune(now=NOW, batch_size=2, budget=10.0, clock=lambda: clock[0])
    # 4 s and 8 s are within the budget, so a third batch starts; after it, 12 s are spent.
    assert (report.runs, report.batches, report.complete) == (6, 3, False)
    assert report.longest_batch == 4.0
    assert TaskRun.objects.count() == 4


def test_runs_wait_for_the_deliveries_when_the_budget_ends_among_them():
    channel = make_channel()
    for _ in range(3):
        delivery(channel, NotificationDelivery.Status.SENT, DELIVERY_CUTOFF - dt.timedelta(1))
    old_runs(2)
    report = prune(now=NOW, batch_size=2, max_rows=2)
    assert (report.deliveries, report.runs, report.complete) == (2, 0, False)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        prune(now=NOW, batch_size=0)


@pytest.mark.parametrize("value", [0, -1, 36501, 1.5, "90", True])
def test_an_invalid_retention_setting_is_refused_by_name(settings, value):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "RUN_RETENTION_DAYS": value}
    with pytest.raises(retention.RetentionSettingError, match="RUN_RETENTION_DAYS"):
        prune(now=NOW)


# --- the edges ----------------------------------------------------------------------------------


def test_the_maintenance_pass_prunes_within_its_budget(history):
    with mock.patch.object(retention, "prune", wraps=retention.prune) as spy:
        report = maintenance.run_maintenance(now=lambda: NOW)
    spy.assert_called_once_with(now=NOW, budget=retention.MAINTENANCE_BUDGET)
    assert report.runs_pruned == len(to_delete(history))
    assert report.deliveries_pruned == 1
    assert "runs pruned" in str(report)


def test_an_invalid_setting_does_not_stop_the_other_maintenance_parts(settings, caplog):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "DELIVERY_RETENTION_DAYS": 0}
    with mock.patch.object(maintenance, "expire_queued_runs") as expire:
        maintenance.run_maintenance(now=lambda: NOW)
    assert expire.called
    assert "prune_history failed" in caplog.text


def command(*args: str) -> str:
    out = io.StringIO()
    with freeze_time(NOW):
        call_command("orchestrator_prune", *args, stdout=out)
    return out.getvalue()


def test_the_command_dry_run_prints_cut_offs_and_counts_and_deletes_nothing(history):
    runs = TaskRun.objects.count()
    output = command("--dry-run")
    assert TaskRun.objects.count() == runs
    assert "Task runs: older than 2026-03-03T12:00:00+00:00 (RUN_RETENTION_DAYS = 90)." in output
    assert (
        "Deliveries and alert state: older than 2026-05-02T12:00:00+00:00 "
        "(DELIVERY_RETENTION_DAYS = 30)." in output
    )
    expected = (
        f"Would delete: {len(to_delete(history))} task runs (orchestrator_taskrun), "
        "1 notification deliveries (orchestrator_notificationdelivery), "
        "0 alert states (orchestrator_alertstate)."
    )
    assert expected in output


def test_the_command_deletes_and_says_so(history):
    output = command("--batch-size", "4")
    assert f"Deleted: {len(to_delete(history))} task runs" in output
    assert remaining(history) == set(history) - to_delete(history)


def test_the_command_says_what_is_kept_forever(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "RUN_RETENTION_DAYS": None}
    assert "Task runs: kept forever (RUN_RETENTION_DAYS is None)." in command("--dry-run")


def test_the_command_names_an_invalid_setting(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "RUN_RETENTION_DAYS": 0}
    with pytest.raises(CommandError, match="RUN_RETENTION_DAYS"):
        command("--dry-run")


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--budget", "-1"]])
def test_the_command_refuses_bad_options(args):
    with pytest.raises(CommandError):
        command(*args)
