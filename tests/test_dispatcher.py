"""The dispatcher service, run in-process: no worker, no broker."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.db import OperationalError, connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from freezegun import freeze_time

from orchestrator import dispatcher, reconnect, rollups, signals
from orchestrator.dispatcher import Action, Attempt, DatabaseUnavailable, run_task
from orchestrator.models import ScheduledTask, TaskDefinition, TaskRun, TaskState
from orchestrator.prepared import PreparedInsert
from tests.utils import make_run, make_scheduled_task

pytestmark = pytest.mark.django_db

ALL_SIGNALS = {
    "task_succeeded": signals.task_succeeded,
    "task_retrying": signals.task_retrying,
    "task_failed": signals.task_failed,
    "task_recovered": signals.task_recovered,
    "task_skipped": signals.task_skipped,
    "task_paused": signals.task_paused,
}
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def orchestrator_settings(**overrides: Any) -> override_settings:
    return override_settings(ORCHESTRATOR={**settings.ORCHESTRATOR, **overrides})


@pytest.fixture
def only_our_receivers() -> Iterator[None]:
    """Disconnect the receivers other modules connect to our signals, for the test's length."""
    saved = {name: signal.receivers for name, signal in ALL_SIGNALS.items()}
    for signal in ALL_SIGNALS.values():
        signal.receivers = []
        signal.sender_receivers_cache.clear()
    yield
    for name, signal in ALL_SIGNALS.items():
        signal.receivers = saved[name]
        signal.sender_receivers_cache.clear()


@pytest.fixture
def sent(only_our_receivers: None) -> Iterator[list[tuple[str, str, str]]]:
    """Every signal sent, as (signal name, run status in the database, run status in memory)."""
    log: list[tuple[str, str, str]] = []

    def receiver_for(name: str):
        def receiver(sender: Any, run: TaskRun, scheduled_task: ScheduledTask, **kw: Any) -> None:
            assert sender is ScheduledTask
            assert scheduled_task.pk == run.scheduled_task_id
            stored = TaskRun.objects.get(pk=run.pk).status
            log.append((name, stored, run.status))

        return receiver

    receivers = {name: receiver_for(name) for name in ALL_SIGNALS}
    for name, signal in ALL_SIGNALS.items():
        signal.connect(receivers[name], weak=False)
    yield log
    for name, signal in ALL_SIGNALS.items():
        signal.disconnect(receivers[name])


def test_a_successful_attempt_records_the_run_and_passes_kwargs(sent: list) -> None:
    task = make_scheduled_task(
        "echo", "tests.sample_tasks.echo", kwargs={"days": 7, "who": "ops"}, priority=7, queue="q1"
    )
    outcome = run_task(
        Attempt(task.pk, trigger="manual", celery_task_id="abc", worker="w1@host", queue="q1")
    )

    assert outcome.action is Action.DONE
    run = TaskRun.objects.get()
    assert run == outcome.run
    assert run.status == TaskRun.Status.SUCCEEDED
    assert run.result == {"days": 7, "who": "ops"}
    assert (run.attempt, run.max_attempts, run.trigger) == (1, 4, "manual")
    assert (run.celery_task_id, run.worker, run.queue, run.priority) == ("abc", "w1@host", "q1", 7)
    assert run.finished_at is not None and run.duration == run.finished_at - run.started_at
    assert run.error_type == run.error_message == run.traceback == ""
    assert sent == [("task_succeeded", "succeeded", "succeeded")]


def success_statements() -> list[str]:
    """What a successful attempt sends: load with the task's state, insert, then the update and
    the add to the per-task aggregates (orchestrator.rollups), which PostgreSQL does in one
    statement (an UPDATE in a WITH clause) and other databases in one transaction of two."""
    if connection.vendor == "postgresql":
        return ["SELECT", "INSERT", "WITH"]
    return ["SELECT", "INSERT", "UPDATE", "INSERT"]


def verbs(queries: CaptureQueriesContext) -> list[str]:
    """The statements captured, without SQLite's explicit BEGIN and COMMIT."""
    statements = [q["sql"].split()[0] for q in queries.captured_queries]
    return [verb for verb in statements if verb not in ("BEGIN", "COMMIT")]


# Outside a test transaction, as in a worker: autocommit, no savepoint around the insert.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("from_beat", [True, False], ids=["from-beat", "manual"])
def test_a_successful_attempt_costs_three_queries(
    from_beat: bool, only_our_receivers: None
) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1, "b": 2})
    make_run(task, status=TaskRun.Status.SUCCEEDED)

    with CaptureQueriesContext(connection) as queries:
        outcome = run_task(Attempt(task.pk, from_beat=from_beat))

    # Three on PostgreSQL; the fourth elsewhere buys the exact per-task aggregates.
    assert verbs(queries) == success_statements()
    assert outcome.run is not None and outcome.run.result == 3


@pytest.mark.django_db(transaction=True)
def test_a_recovery_writes_the_task_state_with_the_run_in_one_transaction(
    only_our_receivers: None,
) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1, "b": 2})
    make_run(task, status=TaskRun.Status.FAILED)

    with CaptureQueriesContext(connection) as queries:
        run_task(Attempt(task.pk))

    # Load with the previous final status, insert, then the run (with its count in the
    # aggregates) and the state in one transaction.
    assert verbs(queries) == [*success_statements(), "UPDATE"]
    state = TaskState.objects.get(pk=task.pk)
    assert (state.last_final_status, state.consecutive_failures) == ("succeeded", 0)


@pytest.mark.django_db(transaction=True)
def test_a_success_after_a_success_costs_three_queries_with_alerts_connected() -> None:
    # Every receiver the app connects (alerts included) is live here: the common success, after
    # a success, must not pay for the recovery check.
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1, "b": 2})
    make_run(task, status=TaskRun.Status.SUCCEEDED)

    with CaptureQueriesContext(connection) as queries:
        run_task(Attempt(task.pk, trigger="manual"))

    assert verbs(queries) == success_statements()


@freeze_time("2026-03-01 12:07:30")
def test_a_run_sent_by_beat_records_the_tick_it_belongs_to() -> None:
    task = make_scheduled_task("every-5", "tests.sample_tasks.noop", cron="*/5 * * * *")

    from_beat = run_task(Attempt(task.pk, from_beat=True)).run
    hand_sent = run_task(Attempt(task.pk)).run
    manual = run_task(Attempt(task.pk, trigger="manual")).run

    assert from_beat is not None and hand_sent is not None and manual is not None
    assert from_beat.scheduled_for == dt.datetime(2026, 3, 1, 12, 5, tzinfo=dt.UTC)
    assert hand_sent.scheduled_for is None
    assert manual.scheduled_for is None


@freeze_time("2026-03-01 12:07:30")
def test_the_tick_orchestrators_scheduler_stamps_wins_over_the_workers_clock() -> None:
    task = make_scheduled_task("every-5", "tests.sample_tasks.noop", cron="*/5 * * * *")
    # The message for 12:00 waited in the broker: the worker starts it at 12:07:30, in the tick
    # of 12:05 by its own clock.
    stamped = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

    run = run_task(Attempt(task.pk, from_beat=True, scheduled_for=stamped)).run

    assert run is not None
    assert run.scheduled_for == stamped
    assert run.started_at == dt.datetime(2026, 3, 1, 12, 7, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "transactional",
    [
        pytest.param(True, marks=pytest.mark.django_db(transaction=True), id="autocommit"),
        pytest.param(False, id="inside-a-transaction"),
    ],
)
def test_a_second_message_for_the_same_tick_is_dropped_without_calling(
    transactional: bool, tmp_path: Path, caplog: Any
) -> None:
    log = tmp_path / "calls.log"
    task = make_scheduled_task(
        "record", "tests.sample_tasks.record", kwargs={"log_file": str(log), "label": "ran"}
    )
    tick = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

    first = run_task(Attempt(task.pk, celery_task_id="beat-1", scheduled_for=tick))
    second = run_task(Attempt(task.pk, celery_task_id="beat-2", scheduled_for=tick))

    assert first.action is Action.DONE
    assert second.action is Action.DROP
    assert second.run is None
    assert log.read_text() == "ran\n"  # the function ran once
    assert TaskRun.objects.get().celery_task_id == "beat-1"
    assert "already has a run; dropping this duplicate (Celery id beat-2)" in caplog.text
    # Another attempt, or another tick, is not a duplicate.
    assert run_task(Attempt(task.pk, number=2, scheduled_for=tick)).action is Action.DONE
    assert (
        run_task(Attempt(task.pk, scheduled_for=tick + dt.timedelta(minutes=1))).action
        is Action.DONE
    )


def test_a_message_redelivered_after_its_worker_died_runs_the_tick_again() -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    tick = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    make_run(task, status=TaskRun.Status.RUNNING, celery_task_id="c1", scheduled_for=tick)

    outcome = run_task(Attempt(task.pk, celery_task_id="c1", redelivered=True, scheduled_for=tick))

    assert outcome.action is Action.DONE
    assert sorted(TaskRun.objects.values_list("status", flat=True)) == ["lost", "succeeded"]


def test_a_run_of_a_deleted_task_is_dropped_without_a_trace(caplog: Any) -> None:
    outcome = run_task(Attempt(987654))
    assert outcome.action is Action.DROP
    assert outcome.run is None
    assert not TaskRun.objects.exists()
    assert "987654 no longer exists" in caplog.text


@pytest.mark.parametrize("disabled", ["task", "definition"])
def test_a_disabled_task_or_definition_is_skipped_and_never_called(
    disabled: str, sent: list
) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    if disabled == "task":
        ScheduledTask.objects.filter(pk=task.pk).update(enabled=False)
    else:
        TaskDefinition.objects.filter(pk=task.task_definition_id).update(enabled=False)

    with mock.patch("tests.sample_tasks.add") as add:
        outcome = run_task(Attempt(task.pk))

    add.assert_not_called()
    assert outcome.action is Action.DONE
    run = TaskRun.objects.get()
    assert run.status == TaskRun.Status.SKIPPED
    expected = {"task": "scheduled task 'add' is disabled", "definition": "definition 'add' is"}
    assert expected[disabled] in run.error_message
    assert sent == [("task_skipped", "skipped", "skipped")]


def test_an_import_path_edited_in_the_database_to_os_system_never_runs(
    tmp_path: Path, sent: list
) -> None:
    marker = tmp_path / "pwned"
    task = make_scheduled_task("shell", "tests.sample_tasks.echo")
    # QuerySet.update() skips validation, as a hand-edited row would.
    TaskDefinition.objects.filter(pk=task.task_definition_id).update(import_path="os.system")
    ScheduledTask.objects.filter(pk=task.pk).update(kwargs={"command": f"touch {marker}"})

    with mock.patch("os.system") as system:
        outcome = run_task(Attempt(task.pk, number=1))

    system.assert_not_called()
    assert not marker.exists()
    assert outcome.action is Action.DONE  # refused for good: no retry
    run = TaskRun.objects.get()
    assert run.status == TaskRun.Status.FAILED
    assert run.error_type == "orchestrator.callables.NotAllowedError"
    assert run.error_message.startswith("Refused to run 'os.system' for task 'shell': ")
    assert "Module 'os' is not allowed" in run.error_message
    assert sent == [("task_failed", "failed", "failed")]


def test_a_function_an_allowed_module_merely_reexports_is_refused_at_run_time() -> None:
    task = make_scheduled_task("shell", "tests.sample_tasks.noop")
    TaskDefinition.objects.filter(pk=task.task_definition_id).update(
        import_path="tests.sample_tasks.system"
    )
    run = run_task(Attempt(task.pk)).run
    assert run is not None and run.status == TaskRun.Status.FAILED
    assert "not an allowed module" in run.error_message


def test_kwargs_that_no_longer_fit_the_function_fail_without_retry() -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1}, max_retries=5)
    ScheduledTask.objects.filter(pk=task.pk).update(kwargs={"a": 1, "c": 2})

    outcome = run_task(Attempt(task.pk))

    assert outcome.action is Action.DONE
    assert outcome.run is not None and outcome.run.status == TaskRun.Status.FAILED
    assert "Unknown argument(s) c" in outcome.run.error_message


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"retry_backoff": "sometimes"}, "its retry policy is invalid"),
        ({"kwargs": [1, 2]}, "kwargs must be a JSON object, not a JSON list"),
    ],
)
def test_a_row_edited_around_validation_fails_clearly_without_running(
    edit: dict[str, Any], message: str, tmp_path: Path
) -> None:
    log = tmp_path / "calls.log"
    task = make_scheduled_task(
        "record",
        "tests.sample_tasks.record",
        kwargs={"log_file": str(log), "label": "called"},
        max_retries=3,
    )
    ScheduledTask.objects.filter(pk=task.pk).update(**edit)

    outcome = run_task(Attempt(task.pk))

    assert not log.exists()  # never called
    assert outcome.action is Action.DONE
    run = TaskRun.objects.get()
    assert run.status == TaskRun.Status.FAILED
    assert run.error_type == "orchestrator.dispatcher.InvalidTaskError"
    assert message in run.error_message


@freeze_time(NOW)
def test_a_failed_attempt_is_retried_with_the_policy_delay(sent: list) -> None:
    task = make_scheduled_task(
        "fails",
        "tests.sample_tasks.always_fails",
        kwargs={"message": "database is down"},
        max_retries=2,
        retry_backoff="fixed",
        retry_delay=10,
    )

    outcome = run_task(Attempt(task.pk, number=1))

    assert outcome.action is Action.RETRY
    assert (outcome.countdown, outcome.max_retries) == (10.0, 2)
    run = TaskRun.objects.get()
    assert run.status == TaskRun.Status.RETRIED
    assert (run.attempt, run.max_attempts) == (1, 3)
    assert run.next_retry_at == NOW + dt.timedelta(seconds=10)
    assert run.error_type == "RuntimeError"
    assert run.error_message == "database is down"
    assert run.traceback.startswith("Traceback (most recent call last):")
    assert run.traceback.rstrip().endswith("RuntimeError: database is down")
    assert sent == [("task_retrying", "retried", "retried")]


@freeze_time(NOW)
def test_exponential_backoff_gives_the_delay_table_and_the_last_attempt_fails() -> None:
    task = make_scheduled_task(
        "fails",
        "tests.sample_tasks.always_fails",
        max_retries=3,
        retry_backoff="exponential",
        retry_delay=5,
        retry_backoff_max=15,
    )

    outcomes = [run_task(Attempt(task.pk, number=n)) for n in (1, 2, 3, 4)]

    assert [o.action for o in outcomes] == [Action.RETRY] * 3 + [Action.DONE]
    assert [o.countdown for o in outcomes[:3]] == [5.0, 10.0, 15.0]  # capped at 15
    runs = TaskRun.objects.order_by("attempt")
    assert [r.status for r in runs] == ["retried"] * 3 + ["failed"]
    assert [r.next_retry_at for r in runs] == [
        NOW + dt.timedelta(seconds=5),
        NOW + dt.timedelta(seconds=10),
        NOW + dt.timedelta(seconds=15),
        None,
    ]


def test_an_admin_edit_between_attempts_applies_to_the_next_attempt() -> None:
    task = make_scheduled_task(
        "fails", "tests.sample_tasks.always_fails", max_retries=3, retry_backoff="fixed"
    )
    assert run_task(Attempt(task.pk, number=1)).countdown == 60.0

    task.refresh_from_db()
    task.retry_delay = 5
    task.full_clean()
    task.save()
    assert run_task(Attempt(task.pk, number=2)).countdown == 5.0

    task.max_retries = 2
    task.full_clean()
    task.save()
    last = run_task(Attempt(task.pk, number=3))
    assert last.action is Action.DONE
    assert last.run is not None
    assert (last.run.status, last.run.max_attempts) == (TaskRun.Status.FAILED, 3)


def test_a_task_without_retries_fails_at_the_first_error(sent: list) -> None:
    task = make_scheduled_task("fails", "tests.sample_tasks.always_fails", max_retries=0)
    outcome = run_task(Attempt(task.pk))
    assert outcome.action is Action.DONE
    assert sent == [("task_failed", "failed", "failed")]


def test_long_error_messages_and_tracebacks_are_truncated() -> None:
    task = make_scheduled_task(
        "fails", "tests.sample_tasks.always_fails", kwargs={"message": "x" * 500}, max_retries=0
    )
    with orchestrator_settings(MAX_ERROR_CHARS=100, MAX_TRACEBACK_CHARS=120):
        run = run_task(Attempt(task.pk)).run

    assert run is not None
    assert len(run.error_message) == 100
    assert run.error_message.startswith("xxx")
    assert run.error_message.endswith("characters cut]")
    assert len(run.traceback) == 120
    # The tail is kept: it names the error.
    assert run.traceback.startswith("… [")
    assert run.traceback.endswith("x" * 20 + "\n")


def test_a_long_result_is_stored_as_truncated_json_text() -> None:
    task = make_scheduled_task("echo", "tests.sample_tasks.echo", kwargs={"text": "y" * 500})
    with orchestrator_settings(MAX_RESULT_CHARS=80):
        run = run_task(Attempt(task.pk)).run

    assert run is not None
    run.refresh_from_db()
    assert isinstance(run.result, str)
    assert len(run.result) == 80
    assert run.result.startswith('{"text": "yyy')


def test_a_receiver_that_raises_is_logged_and_changes_nothing(
    only_our_receivers: None, caplog: Any
) -> None:
    def broken(**kwargs: Any) -> None:
        raise ValueError("receiver bug")

    signals.task_succeeded.connect(broken, weak=False)
    try:
        task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 2})
        with caplog.at_level(logging.ERROR, logger="orchestrator.dispatcher"):
            outcome = run_task(Attempt(task.pk))
    finally:
        signals.task_succeeded.disconnect(broken)

    assert outcome.action is Action.DONE
    assert outcome.run is not None
    assert TaskRun.objects.get().status == TaskRun.Status.SUCCEEDED
    assert "receiver bug" in caplog.text
    assert "task 'add', attempt 1" in caplog.text


def test_a_raising_retry_receiver_does_not_stop_the_retry(only_our_receivers: None) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("alerting is down")

    signals.task_retrying.connect(broken, weak=False)
    try:
        task = make_scheduled_task("fails", "tests.sample_tasks.always_fails", max_retries=1)
        outcome = run_task(Attempt(task.pk))
    finally:
        signals.task_retrying.disconnect(broken)
    assert outcome.action is Action.RETRY


def test_the_first_success_after_a_final_failure_is_a_recovery(sent: list) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    make_run(task, status=TaskRun.Status.SUCCEEDED, started_at=NOW - dt.timedelta(hours=2))
    make_run(task, status=TaskRun.Status.FAILED, started_at=NOW - dt.timedelta(hours=1))
    make_run(task, status=TaskRun.Status.SKIPPED, started_at=NOW - dt.timedelta(minutes=30))

    run_task(Attempt(task.pk, trigger="manual"))
    run_task(Attempt(task.pk, trigger="manual"))

    assert sent == [
        ("task_succeeded", "succeeded", "succeeded"),
        ("task_recovered", "succeeded", "succeeded"),
        ("task_succeeded", "succeeded", "succeeded"),
    ]


def test_a_success_after_a_time_limit_kill_is_a_recovery(sent: list) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    make_run(task, status=TaskRun.Status.LOST, error_type="TimeLimitExceeded")

    run_task(Attempt(task.pk))

    assert [name for name, *_ in sent] == ["task_succeeded", "task_recovered"]


@pytest.mark.parametrize("error_type", ["WorkerLost", "Revoked"])
def test_a_success_after_a_redelivered_or_revoked_attempt_is_not_a_recovery(
    error_type: str, sent: list
) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    make_run(task, status=TaskRun.Status.SUCCEEDED, started_at=NOW - dt.timedelta(hours=1))
    make_run(task, status=TaskRun.Status.LOST, error_type=error_type)

    run_task(Attempt(task.pk))

    assert [name for name, *_ in sent] == ["task_succeeded"]


def test_a_success_after_retries_only_is_not_a_recovery(sent: list) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    make_run(task, status=TaskRun.Status.SUCCEEDED, started_at=NOW - dt.timedelta(hours=1))
    make_run(task, status=TaskRun.Status.RETRIED, started_at=NOW - dt.timedelta(minutes=1))

    run_task(Attempt(task.pk, number=2))

    assert sent == [("task_succeeded", "succeeded", "succeeded")]


def test_a_redelivered_attempt_marks_the_dead_workers_row_lost() -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    orphan = make_run(task, status=TaskRun.Status.RUNNING, celery_task_id="c1")

    run_task(Attempt(task.pk, celery_task_id="c1", redelivered=True))

    orphan.refresh_from_db()
    assert orphan.status == TaskRun.Status.LOST
    assert orphan.error_type == "WorkerLost"
    assert orphan.finished_at is not None
    assert TaskRun.objects.filter(status=TaskRun.Status.SUCCEEDED, celery_task_id="c1").count() == 1


def test_mark_lost_touches_only_running_rows_of_that_celery_task() -> None:
    task = make_scheduled_task()
    running = make_run(task, status=TaskRun.Status.RUNNING, celery_task_id="c1")
    done = make_run(task, status=TaskRun.Status.RETRIED, celery_task_id="c1")
    other = make_run(task, status=TaskRun.Status.RUNNING, celery_task_id="c2")

    lost = dispatcher.mark_lost("c1", "killed", error_type="TimeLimitExceeded")

    assert [r.pk for r in lost] == [running.pk]
    statuses = dict(TaskRun.objects.values_list("pk", "status"))
    assert statuses == {running.pk: "lost", done.pk: "retried", other.pk: "running"}


def test_enqueue_sends_the_task_now_with_its_routing_options() -> None:
    task = make_scheduled_task(priority=9, queue="urgent", expires=30, time_limit=60)
    with (
        orchestrator_settings(BROKER_TRANSPORT="redis"),
        mock.patch("orchestrator.tasks.run_scheduled_task.apply_async") as apply_async,
    ):
        dispatcher.enqueue(task, trigger="api")

    apply_async.assert_called_once_with(
        args=[task.pk],
        kwargs={"trigger": "api"},
        queue="urgent",
        priority=0,  # Redis serves 0 first
        expires=30.0,
        time_limit=60,
    )


def test_run_now_writes_a_queued_run_and_sends_it_once_committed(
    django_capture_on_commit_callbacks: Any,
) -> None:
    task = make_scheduled_task()
    with (
        mock.patch("orchestrator.tasks.run_scheduled_task.apply_async") as apply_async,
        django_capture_on_commit_callbacks(execute=True),
    ):
        result = task.run_now()
    run = TaskRun.objects.get()
    assert (run.status, run.trigger, run.celery_task_id) == ("queued", "manual", result.id)
    apply_async.assert_called_once_with(
        args=[task.pk],
        kwargs={"trigger": "manual", "run_id": run.pk},
        queue=None,
        priority=None,
        expires=None,
        time_limit=None,
        task_id=result.id,
    )


def test_timestamps_come_from_the_clock_in_use() -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    ticks = iter([NOW, NOW + dt.timedelta(seconds=3)])
    run = run_task(Attempt(task.pk, trigger="manual"), now=lambda: next(ticks)).run
    assert run is not None
    assert (run.started_at, run.duration) == (NOW, dt.timedelta(seconds=3))
    assert run.started_at <= timezone.now()


# --- a message delivered again, a database connection that drops --------------------------


@pytest.mark.parametrize("finished", ["succeeded", "failed", "retried", "skipped"])
def test_a_message_delivered_again_after_its_attempt_finished_is_dropped_uncalled(
    finished: str, tmp_path: Path, caplog: Any
) -> None:
    # The worker died after writing the outcome and before acknowledging the message. A manual
    # run has no tick, so only the Celery id can tell.
    log = tmp_path / "calls.log"
    task = make_scheduled_task(
        "record", "tests.sample_tasks.record", kwargs={"log_file": str(log), "label": "ran"}
    )
    done = make_run(task, status=finished, celery_task_id="c1", trigger="manual")

    outcome = run_task(Attempt(task.pk, trigger="manual", celery_task_id="c1", redelivered=True))

    assert outcome.action is Action.DROP
    assert not log.exists()
    assert list(TaskRun.objects.values_list("pk", flat=True)) == [done.pk]
    assert f"delivered again after it had finished ({finished}, run {done.pk}" in caplog.text


def test_a_beat_message_delivered_again_in_a_later_tick_does_not_run_again() -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    tick = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    make_run(task, celery_task_id="c1", scheduled_for=tick)

    # Redis gives an unacknowledged message back after its visibility timeout: ticks later.
    with freeze_time(tick + dt.timedelta(minutes=5, seconds=7)):
        outcome = run_task(Attempt(task.pk, celery_task_id="c1", redelivered=True, from_beat=True))

    assert outcome.action is Action.DROP
    assert TaskRun.objects.count() == 1


def test_a_message_delivered_again_runs_only_the_attempt_it_carries() -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    make_run(task, status=TaskRun.Status.RETRIED, celery_task_id="c1", attempt=1)

    outcome = run_task(Attempt(task.pk, number=2, celery_task_id="c1", redelivered=True))

    assert outcome.action is Action.DONE
    assert outcome.run is not None and outcome.run.attempt == 2


def test_an_attempt_delivered_again_keeps_the_tick_its_dead_worker_ran_it_for() -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    tick = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    orphan = make_run(task, status=TaskRun.Status.RUNNING, celery_task_id="c1", scheduled_for=tick)

    with freeze_time(tick + dt.timedelta(minutes=5)):
        outcome = run_task(Attempt(task.pk, celery_task_id="c1", redelivered=True, from_beat=True))

    orphan.refresh_from_db()
    assert orphan.status == TaskRun.Status.LOST
    assert outcome.run is not None and outcome.run.scheduled_for == tick


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The reconnect delays, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(reconnect, "sleep", slept.append)
    return slept


def failing_saves(monkeypatch: pytest.MonkeyPatch, fail: Any) -> list[int]:
    """Make the run's writes raise OperationalError on the calls for which ``fail(n)`` is true.

    Call 1 is the ``running`` insert (the dispatcher's prepared ``create()``), call 2 the
    outcome's update (a conditional ``UPDATE`` of the running row).
    """
    real_create = PreparedInsert.create
    queryset_class = type(TaskRun.objects.all())
    real_update = queryset_class.update
    calls: list[int] = []

    def count_and_maybe_fail() -> None:
        calls.append(len(calls) + 1)
        if fail(len(calls)):
            raise OperationalError("terminating connection due to administrator command")

    def create(self: PreparedInsert[Any], *args: Any, **kwargs: Any) -> Any:
        count_and_maybe_fail()
        return real_create(self, *args, **kwargs)

    inside: list[bool] = []

    def update(self: Any, **kwargs: Any) -> int:
        if self.model is TaskRun and "status" in kwargs and not inside:
            count_and_maybe_fail()
        return real_update(self, **kwargs)

    # The outcome's update goes through the aggregates' writer (one statement on PostgreSQL).
    real_update_and_record = rollups.update_and_record

    def update_and_record(run: TaskRun, values: dict[str, Any], *, only_if_status: str) -> int:
        count_and_maybe_fail()
        inside.append(True)
        try:
            return real_update_and_record(run, values, only_if_status=only_if_status)
        finally:
            inside.pop()

    monkeypatch.setattr(PreparedInsert, "create", create)
    monkeypatch.setattr(queryset_class, "update", update)
    monkeypatch.setattr(rollups, "update_and_record", update_and_record)
    return calls


# Outside a test transaction, as in a worker: a transaction of the caller's is never retried.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("failing_call", [1, 2], ids=["insert", "outcome"])
def test_a_history_write_on_a_dropped_connection_is_logged_and_written_again(
    failing_call: int,
    monkeypatch: pytest.MonkeyPatch,
    sleeps: list[float],
    tmp_path: Path,
    caplog: Any,
) -> None:
    log = tmp_path / "calls.log"
    task = make_scheduled_task(
        "record", "tests.sample_tasks.record", kwargs={"log_file": str(log), "label": "ran"}
    )
    failing_saves(monkeypatch, lambda n: n == failing_call)

    with mock.patch.object(connection, "close", wraps=connection.close) as close:
        outcome = run_task(Attempt(task.pk, trigger="manual", celery_task_id="c1"))

    assert outcome.run is not None
    assert TaskRun.objects.get().status == TaskRun.Status.SUCCEEDED
    assert log.read_text() == "ran\n"
    assert sleeps == [0.5]
    close.assert_called_once_with()  # Django opens a new connection on the next query
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "Database error while recording task 'record' attempt 1" in errors[0].getMessage()
    assert "(try 1 of 5): terminating connection" in errors[0].getMessage()


@pytest.mark.django_db(transaction=True)
def test_an_insert_the_server_committed_before_the_connection_dropped_is_not_made_twice(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], tmp_path: Path
) -> None:
    log = tmp_path / "calls.log"
    task = make_scheduled_task(
        "record", "tests.sample_tasks.record", kwargs={"log_file": str(log), "label": "ran"}
    )
    real_create = PreparedInsert.create
    calls: list[int] = []

    def create(self: PreparedInsert[Any], *args: Any, **kwargs: Any) -> Any:
        run = real_create(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # written, but the answer never came back
            raise OperationalError("server closed the connection unexpectedly")
        return run

    monkeypatch.setattr(PreparedInsert, "create", create)
    tick = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

    outcome = run_task(Attempt(task.pk, celery_task_id="c1", scheduled_for=tick))

    assert outcome.action is Action.DONE
    assert log.read_text() == "ran\n"  # not mistaken for another beat's run of the tick
    run = TaskRun.objects.get()
    assert (run.pk, run.status) == (outcome.run.pk, TaskRun.Status.SUCCEEDED)


@pytest.mark.django_db(transaction=True)
def test_an_outcome_that_cannot_be_written_is_logged_with_what_it_was(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], caplog: Any
) -> None:
    task = make_scheduled_task("fails", "tests.sample_tasks.always_fails", max_retries=0)
    failing_saves(monkeypatch, lambda n: n > 1)

    outcome = run_task(Attempt(task.pk, celery_task_id="c1"))

    # Every try is logged, backing off; the last line says what the row would have said.
    assert sleeps == [0.5, 1.0, 2.0, 4.0]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert [m.split(" (try ")[1][:6] for m in errors[:5]] == [f"{n} of 5" for n in range(1, 6)]
    assert errors[5].startswith(
        f"Could not record the outcome of task 'fails' attempt 1 (run {outcome.run.pk}, "
        "Celery id c1): status failed, finished at "
    )
    assert ", RuntimeError: boom; the database said: terminating connection" in errors[5]
    # The run goes on: the failure is final, as it would have been.
    assert outcome.action is Action.DONE and outcome.status == TaskRun.Status.FAILED
    assert TaskRun.objects.get().status == TaskRun.Status.RUNNING


@pytest.mark.django_db(transaction=True)
def test_a_run_that_cannot_be_recorded_at_all_never_calls_the_function(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], tmp_path: Path, caplog: Any
) -> None:
    log = tmp_path / "calls.log"
    task = make_scheduled_task(
        "record", "tests.sample_tasks.record", kwargs={"log_file": str(log), "label": "ran"}
    )
    failing_saves(monkeypatch, lambda n: True)

    # Raised for the Celery task, which sends the message again rather than lose the run.
    with pytest.raises(DatabaseUnavailable) as raised:
        run_task(Attempt(task.pk, celery_task_id="c1"))

    assert isinstance(raised.value.__cause__, OperationalError)
    assert not log.exists()
    assert len(sleeps) == 4
    assert (
        "Could not record task 'record' attempt 1 as running (Celery id c1); the database is "
        "unreachable and the function was not called"
    ) in caplog.text


def test_inside_a_callers_transaction_a_dropped_connection_is_not_retried(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    calls = failing_saves(monkeypatch, lambda n: n == 1)

    with pytest.raises(DatabaseUnavailable):
        run_task(Attempt(task.pk))

    assert (calls, sleeps) == ([1], [])


@pytest.mark.django_db(transaction=True)
def test_recording_a_sent_retry_survives_a_dropped_connection(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    task = make_scheduled_task("retrying")
    run = make_run(task, status=TaskRun.Status.RETRIED)
    real_update = type(TaskRun.objects.all()).update
    calls: list[int] = []

    def update(self: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("terminating connection due to administrator command")
        return real_update(self, **kwargs)

    monkeypatch.setattr(type(TaskRun.objects.all()), "update", update)
    dispatcher.mark_retry_sent(run, now=lambda: NOW)

    run.refresh_from_db()
    assert run.retry_sent_at == NOW  # an unrecorded send would make maintenance send it again
    assert sleeps == [0.5]


# --- operator controls: exception rules, overlap, pauses, the circuit breaker, own kwargs ------


def test_a_never_retry_on_error_fails_at_once_saying_why(sent: list) -> None:
    task = make_scheduled_task(
        "strict", "tests.sample_tasks.raises", max_retries=3, never_retry_on=["ValueError"]
    )
    outcome = run_task(Attempt(task.pk))
    assert outcome.action is Action.DONE
    run = TaskRun.objects.get()
    assert (run.status, run.attempt, run.max_attempts) == ("failed", 1, 4)
    assert run.note == "not retried: ValueError matches never_retry_on (ValueError)"
    assert [name for name, *_ in sent] == ["task_failed"]


def test_an_error_outside_retry_on_fails_at_once_and_one_inside_follows_the_backoff() -> None:
    task = make_scheduled_task(
        "picky",
        "tests.sample_tasks.raises",
        kwargs={"kind": "KeyError"},
        max_retries=3,
        retry_delay=5,
        retry_backoff="fixed",
        retry_on=["ConnectionError", "LookupError"],  # KeyError is a LookupError
    )
    assert run_task(Attempt(task.pk)).countdown == 5.0
    ScheduledTask.objects.filter(pk=task.pk).update(kwargs={"kind": "ValueError"})
    outcome = run_task(Attempt(task.pk, number=2))
    assert outcome.status == "failed"
    assert outcome.run.note == "not retried: ValueError is not in retry_on"


def test_a_run_that_arrives_while_another_runs_is_skipped_when_overlap_is_skip(
    sent: list,
) -> None:
    task = make_scheduled_task("single", "tests.sample_tasks.noop", overlap="skip")
    still_running = make_run(task, status=TaskRun.Status.RUNNING, celery_task_id="other")

    outcome = run_task(Attempt(task.pk, celery_task_id="mine"))

    assert outcome.status == "skipped"
    assert f"run {still_running.pk} (attempt 1, started" in outcome.run.error_message
    assert "is still running and overlap is 'skip'" in outcome.run.error_message
    assert [name for name, *_ in sent] == ["task_skipped"]
    # A run its dead worker left running stops blocking once it is marked lost.
    dispatcher.mark_lost("other", "worker died", error_type=TaskRun.WORKER_LOST)
    assert run_task(Attempt(task.pk, celery_task_id="next")).status == "succeeded"


def test_overlapping_runs_are_allowed_by_default() -> None:
    task = make_scheduled_task("many", "tests.sample_tasks.noop")
    make_run(task, status=TaskRun.Status.RUNNING)
    assert run_task(Attempt(task.pk)).status == "succeeded"


def test_a_paused_task_records_skipped_runs_until_its_pause_ends(sent: list) -> None:
    task = make_scheduled_task("paused", "tests.sample_tasks.noop")
    task.pause("database migration", until=timezone.now() + dt.timedelta(hours=1))

    outcome = run_task(Attempt(task.pk, scheduled_for=NOW))
    assert (outcome.status, outcome.run.error_message) == ("skipped", "paused: database migration")
    assert [name for name, *_ in sent] == ["task_skipped"]

    later = timezone.now() + dt.timedelta(hours=2)
    assert run_task(Attempt(task.pk), now=lambda: later).status == "succeeded"


def test_the_circuit_breaker_pauses_after_n_final_failures_in_a_row(sent: list) -> None:
    task = make_scheduled_task(
        "breaker", "tests.sample_tasks.always_fails", max_retries=0, pause_after_failures=2
    )
    run_task(Attempt(task.pk))
    task.refresh_from_db()
    assert task.paused is False
    signals_before = len(sent)

    run_task(Attempt(task.pk))

    task.refresh_from_db()
    assert (task.paused, task.pause_reason) == (True, "paused after 2 consecutive failures")
    assert [name for name, *_ in sent[signals_before:]] == ["task_failed", "task_paused"]
    from orchestrator import history

    latest = history.describe(history.entries_for(task).first())
    assert (latest["changed_by"], latest["source"]) == ("system", "system")
    assert latest["changes"]["paused"] == ["False", "True"]


def test_a_success_resets_the_circuit_breakers_count() -> None:
    task = make_scheduled_task(
        "flappy", "tests.sample_tasks.raises", max_retries=0, pause_after_failures=2
    )
    run_task(Attempt(task.pk))
    ScheduledTask.objects.filter(pk=task.pk).update(
        task_definition=make_scheduled_task("ok", "tests.sample_tasks.noop").task_definition,
        kwargs={},
    )
    run_task(Attempt(task.pk))
    assert TaskState.objects.get(pk=task.pk).consecutive_failures == 0


def test_a_run_with_its_own_kwargs_calls_the_function_with_them_and_records_them(
    tmp_path: Path,
) -> None:
    log = tmp_path / "calls.log"
    task = make_scheduled_task(
        "record", "tests.sample_tasks.record", kwargs={"log_file": str(log), "label": "usual"}
    )
    override = {"log_file": str(log), "label": "special"}
    run_task(Attempt(task.pk, trigger="manual", kwargs_override=override))
    assert log.read_text() == "special\n"
    run = TaskRun.objects.get()
    assert (run.kwargs_override, run.result) == (override, "special")
    assert run.task_version == task.version


def test_kwargs_of_a_run_that_no_longer_fit_fail_it_without_calling() -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    outcome = run_task(Attempt(task.pk, kwargs_override={"zzz": 1}))
    assert outcome.status == "failed"
    assert "Unknown argument(s) zzz" in outcome.run.error_message


def test_a_queued_run_becomes_the_attempts_row_and_a_cancelled_one_never_runs(
    tmp_path: Path,
) -> None:
    log = tmp_path / "calls.log"
    task = make_scheduled_task(
        "record", "tests.sample_tasks.record", kwargs={"log_file": str(log), "label": "ran"}
    )
    queued = make_run(task, status=TaskRun.Status.QUEUED, celery_task_id="c1")
    outcome = run_task(Attempt(task.pk, celery_task_id="c1", run_id=queued.pk))
    assert (outcome.run.pk, outcome.status) == (queued.pk, "succeeded")
    assert TaskRun.objects.count() == 1

    cancelled = make_run(task, status=TaskRun.Status.CANCELLED, celery_task_id="c2")
    outcome = run_task(Attempt(task.pk, celery_task_id="c2", run_id=cancelled.pk))
    assert outcome.status == "cancelled"
    assert log.read_text() == "ran\n"  # called once, for the first run only


def test_a_run_cancelled_while_it_runs_keeps_cancelled_and_sends_nothing(
    sent: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = make_scheduled_task("long", "tests.sample_tasks.noop")

    def cancelled_meanwhile(**kwargs: Any) -> None:
        TaskRun.objects.filter(status=TaskRun.Status.RUNNING).update(
            status=TaskRun.Status.CANCELLED
        )

    monkeypatch.setattr("tests.sample_tasks.noop", cancelled_meanwhile)
    monkeypatch.setattr(cancelled_meanwhile, "__module__", "tests.sample_tasks")
    outcome = run_task(Attempt(task.pk))

    assert outcome.status == "cancelled" and outcome.action is Action.DONE
    assert TaskRun.objects.get().status == "cancelled"
    assert sent == []


def test_the_retry_of_a_cancelled_run_is_dropped_uncalled() -> None:
    task = make_scheduled_task("retrying", "tests.sample_tasks.always_fails", max_retries=2)
    make_run(task, status=TaskRun.Status.CANCELLED, celery_task_id="c1", attempt=1)
    outcome = run_task(Attempt(task.pk, number=2, celery_task_id="c1"))
    assert outcome.action is Action.DROP
    assert TaskRun.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_task_that_cannot_be_loaded_raises_database_unavailable(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], tmp_path: Path
) -> None:
    log = tmp_path / "calls.log"
    task = make_scheduled_task(
        "record", "tests.sample_tasks.record", kwargs={"log_file": str(log), "label": "ran"}
    )

    def refused(scheduled_task_id: int) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(dispatcher, "load_scheduled_task", refused)
    with pytest.raises(DatabaseUnavailable, match="loading scheduled task"):
        run_task(Attempt(task.pk, celery_task_id="c1"))
    assert len(sleeps) == 4  # the reconnect tries came first
    assert not log.exists()
    assert not TaskRun.objects.exists()
