"""The Celery adapter: run in-process with ``apply()`` and with the worker signals sent by hand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from celery.exceptions import Retry, TimeLimitExceeded
from celery.signals import task_failure, task_revoked
from django.conf import settings
from django.test import override_settings
from freezegun import freeze_time

from orchestrator import signals
from orchestrator.models import TaskRun
from orchestrator.tasks import run_scheduled_task
from tests.utils import make_run, make_scheduled_task

pytestmark = pytest.mark.django_db


def test_the_task_is_registered_with_late_acks_and_requeue_on_worker_loss() -> None:
    assert run_scheduled_task.name == "orchestrator.run_scheduled_task"
    assert run_scheduled_task.acks_late is True
    assert run_scheduled_task.reject_on_worker_lost is True


def test_a_flaky_function_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    task = make_scheduled_task(
        "flaky",
        "tests.sample_tasks.flaky",
        kwargs={"counter_file": str(counter), "failures": 2},
        max_retries=3,
        retry_backoff="fixed",
        retry_delay=1,
    )

    # apply() runs retries eagerly, in-process, ignoring the countdown; the header is beat's.
    result = run_scheduled_task.apply(
        args=[task.pk], headers={"periodic_task_name": f"orchestrator:{task.pk}"}
    )

    assert result.get() == {"run": mock.ANY, "status": "succeeded", "attempt": 3}
    runs = list(TaskRun.objects.order_by("attempt"))
    assert [(r.attempt, r.status) for r in runs] == [
        (1, "retried"),
        (2, "retried"),
        (3, "succeeded"),
    ]
    assert len({r.celery_task_id for r in runs}) == 1  # a retry keeps the Celery task id
    assert all(r.trigger == "schedule" and r.max_attempts == 4 for r in runs)
    assert [r.retry_sent_at is not None for r in runs] == [True, True, False]
    # Every attempt belongs to the tick of the first: retries carry it.
    assert runs[0].scheduled_for is not None
    assert {r.scheduled_for for r in runs} == {runs[0].scheduled_for}


def test_a_retry_passes_every_option_explicitly() -> None:
    task = make_scheduled_task(
        "fails",
        "tests.sample_tasks.always_fails",
        max_retries=2,
        retry_backoff="fixed",
        retry_delay=7,
        priority=9,
        expires=30,
        time_limit=20,
    )
    with (
        override_settings(ORCHESTRATOR={**settings.ORCHESTRATOR, "BROKER_TRANSPORT": "redis"}),
        mock.patch.object(run_scheduled_task, "retry", return_value=Retry()) as retry,
    ):
        run_scheduled_task.apply(args=[task.pk], kwargs={"trigger": "api"})

    retry.assert_called_once_with(
        args=(task.pk,),
        kwargs={"trigger": "api"},
        countdown=7.0,
        max_retries=2,
        queue="celery",  # blank queue: the routed default, never left to Celery's fallback
        priority=0,
        expires=37.0,
        time_limit=20,
        throw=False,
    )
    assert TaskRun.objects.get().retry_sent_at is not None


def test_a_message_for_a_deleted_task_is_dropped_not_retried() -> None:
    result = run_scheduled_task.apply(args=[424242])
    assert result.successful()
    assert result.get() is None
    assert not TaskRun.objects.exists()


def test_a_hard_time_limit_marks_the_running_attempt_lost_and_final() -> None:
    task = make_scheduled_task("sleepy", "tests.sample_tasks.sleep", time_limit=1)
    run = make_run(task, status=TaskRun.Status.RUNNING, celery_task_id="c-1", attempt=2)
    failed: list[TaskRun] = []

    def on_failed(sender: Any, run: TaskRun, **kwargs: Any) -> None:
        failed.append(run)

    signals.task_failed.connect(on_failed, weak=False)
    try:
        task_failure.send(
            sender=run_scheduled_task._get_current_object(),
            task_id="c-1",
            exception=TimeLimitExceeded(1),
            args=[task.pk],
            kwargs={},
            traceback=None,
            einfo=None,
        )
    finally:
        signals.task_failed.disconnect(on_failed)

    run.refresh_from_db()
    assert run.status == TaskRun.Status.LOST
    assert run.error_type == "TimeLimitExceeded"
    assert "hard time limit" in run.error_message
    assert run.finished_at is not None
    assert [r.pk for r in failed] == [run.pk]


def test_a_terminated_revoke_marks_the_attempt_lost_without_a_failure_signal() -> None:
    task = make_scheduled_task()
    run = make_run(task, status=TaskRun.Status.RUNNING, celery_task_id="c-2")
    failed: list[Any] = []

    def on_failed(sender: Any, **kwargs: Any) -> None:
        failed.append(kwargs["run"])

    signals.task_failed.connect(on_failed, weak=False)
    try:
        task_revoked.send(
            sender=run_scheduled_task._get_current_object(),
            request=mock.Mock(id="c-2"),
            terminated=True,
            signum=15,
            expired=False,
        )
    finally:
        signals.task_failed.disconnect(on_failed)

    run.refresh_from_db()
    assert run.status == TaskRun.Status.LOST
    assert run.error_type == "Revoked"
    assert failed == []


class OtherTask:
    name = "billing.send_invoices"


def test_failures_of_other_tasks_are_ignored() -> None:
    task = make_scheduled_task()
    run = make_run(task, status=TaskRun.Status.RUNNING, celery_task_id="c-3")
    task_failure.send(
        sender=OtherTask(),
        task_id="c-3",
        exception=TimeLimitExceeded(1),
    )
    run.refresh_from_db()
    assert run.status == TaskRun.Status.RUNNING


MAX_COUNTDOWN = {**settings.ORCHESTRATOR, "MAX_BROKER_COUNTDOWN": 1800}
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@freeze_time(NOW)
@override_settings(ORCHESTRATOR=MAX_COUNTDOWN)
def test_a_retry_due_later_than_the_broker_can_hold_is_kept_in_the_database_not_sent() -> None:
    task = make_scheduled_task(
        "slow-retry",
        "tests.sample_tasks.always_fails",
        max_retries=1,
        retry_backoff="fixed",
        retry_delay=7200,
        retry_backoff_max=7200,
    )
    with (
        mock.patch.object(run_scheduled_task, "retry") as retry,
        mock.patch.object(run_scheduled_task, "apply_async") as apply_async,
    ):
        result = run_scheduled_task.apply(args=[task.pk], headers={"periodic_task_name": "x"})

    retry.assert_not_called()
    apply_async.assert_not_called()
    run = TaskRun.objects.get()
    assert result.get() == {"run": run.pk, "status": "retried", "attempt": 1}
    # The row is the retry: due in two hours, not handed to the broker.
    assert (run.status, run.next_retry_at, run.retry_sent_at) == (
        TaskRun.Status.RETRIED,
        NOW + dt.timedelta(seconds=7200),
        None,
    )


@freeze_time(NOW)
@override_settings(ORCHESTRATOR=MAX_COUNTDOWN)
def test_a_retry_exactly_at_the_broker_limit_still_goes_through_the_broker() -> None:
    task = make_scheduled_task(
        "edge-retry",
        "tests.sample_tasks.always_fails",
        max_retries=1,
        retry_backoff="fixed",
        retry_delay=1800,
        retry_backoff_max=1800,
    )
    with mock.patch.object(run_scheduled_task, "retry", return_value=Retry()) as retry:
        run_scheduled_task.apply(args=[task.pk])

    assert retry.call_args.kwargs["countdown"] == 1800.0
    assert TaskRun.objects.get().retry_sent_at == NOW


def test_the_maintenance_task_is_registered_under_the_name_beat_sync_schedules() -> None:
    from orchestrator.task_names import RUN_MAINTENANCE
    from orchestrator.tasks import run_maintenance

    assert run_maintenance.name == RUN_MAINTENANCE == "orchestrator.run_maintenance"
    assert run_maintenance.apply().get() == {
        "retries_sent": 0,
        "retries_already_run": 0,
        "retries_not_sent": 0,
        "runs_lost": 0,
        "deliveries_requeued": 0,
        "deliveries_failed": 0,
        "tasks_resumed": 0,
        "queued_runs_lost": 0,
        "runs_pruned": 0,
        "deliveries_pruned": 0,
        "alert_states_pruned": 0,
    }


def test_the_tick_stamped_on_a_beat_message_is_the_runs_tick() -> None:
    task = make_scheduled_task("stamped", "tests.sample_tasks.noop")
    tick = dt.datetime(2026, 12, 1, 12, 1, tzinfo=dt.UTC)
    with freeze_time(tick + dt.timedelta(minutes=2, seconds=58)):
        run_scheduled_task.apply(
            args=[task.pk],
            kwargs={"scheduled_for": tick.isoformat()},
            headers={"periodic_task_name": f"orchestrator:{task.pk}"},
        )
    assert TaskRun.objects.get().scheduled_for == tick


# --- the database unreachable before an attempt starts -----------------------------------------


@pytest.fixture
def no_reconnect_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import reconnect

    monkeypatch.setattr(reconnect, "sleep", lambda seconds: None)


@pytest.mark.django_db(transaction=True)
def test_a_run_the_database_could_not_start_is_sent_again_not_acknowledged_as_done(
    monkeypatch: pytest.MonkeyPatch, no_reconnect_sleep: None
) -> None:
    from django.db import OperationalError

    from orchestrator import dispatcher
    from orchestrator.tasks import DATABASE_REQUEUE_COUNTDOWN, REQUEUED_HEADER

    task = make_scheduled_task("nightly")

    def refused(scheduled_task_id: int) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(dispatcher, "load_scheduled_task", refused)
    sent: list[Any] = []
    monkeypatch.setattr(
        "celery.canvas.Signature.apply_async", lambda self, *a, **kw: sent.append(self)
    )
    result = run_scheduled_task.apply(
        args=[task.pk],
        kwargs={"trigger": "manual", "run_id": 7},
        task_id="celery-1",
        headers={"periodic_task_name": f"orchestrator:{task.pk}"},
    )

    assert result.state == "IGNORED"  # this copy is acknowledged; the one sent again runs
    (copy,) = sent
    assert copy.args == (task.pk,) or list(copy.args) == [task.pk]
    assert copy.kwargs == {"trigger": "manual", "run_id": 7}
    options = copy.options
    assert options["task_id"] == "celery-1"
    assert options["countdown"] == DATABASE_REQUEUE_COUNTDOWN
    assert options["retries"] == 0  # not an attempt of its own
    assert options["queue"] == "celery"
    assert options["headers"][REQUEUED_HEADER] is True
    assert options["headers"]["periodic_task_name"] == f"orchestrator:{task.pk}"
    assert not TaskRun.objects.exists()


def test_a_copy_sent_again_takes_over_a_row_its_first_try_committed_unseen() -> None:
    from orchestrator.tasks import REQUEUED_HEADER

    task = make_scheduled_task("nightly")
    # The first try's INSERT was committed, but its answer was lost with the connection.
    ghost = make_run(task, status=TaskRun.Status.RUNNING, celery_task_id="celery-1")

    result = run_scheduled_task.apply(
        args=[task.pk], task_id="celery-1", headers={REQUEUED_HEADER: True}
    )

    assert result.get()["status"] == "succeeded"
    ghost.refresh_from_db()
    assert ghost.status == TaskRun.Status.LOST
    assert TaskRun.objects.filter(status=TaskRun.Status.SUCCEEDED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_run_that_cannot_be_sent_again_is_handed_back_to_the_broker(
    monkeypatch: pytest.MonkeyPatch, no_reconnect_sleep: None
) -> None:
    from celery.exceptions import Reject
    from django.db import OperationalError

    from orchestrator import dispatcher

    task = make_scheduled_task("nightly")

    def refused(scheduled_task_id: int) -> None:
        raise OperationalError("connection refused")

    def broker_down(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(dispatcher, "load_scheduled_task", refused)
    monkeypatch.setattr("celery.canvas.Signature.apply_async", broker_down)
    result = run_scheduled_task.apply(args=[task.pk])
    assert result.state == "REJECTED"
    assert isinstance(result.result, Reject) and result.result.requeue is True


@pytest.mark.django_db(transaction=True)
def test_each_run_starts_by_replacing_an_obsolete_connection_like_a_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker that keeps its connection (CELERY_DB_REUSE_MAX) gets CONN_MAX_AGE and
    # CONN_HEALTH_CHECKS applied per run, as Django applies them per request.
    from orchestrator import tasks

    calls: list[bool] = []
    monkeypatch.setattr(tasks, "close_old_connections", lambda: calls.append(True))
    task = make_scheduled_task("noop")
    run_scheduled_task.apply(args=[task.pk])
    assert calls == [True]
    assert TaskRun.objects.get().status == TaskRun.Status.SUCCEEDED


def test_a_run_inside_a_callers_transaction_leaves_its_connection_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator import tasks

    calls: list[bool] = []
    monkeypatch.setattr(tasks, "close_old_connections", lambda: calls.append(True))
    run_scheduled_task.apply(args=[make_scheduled_task("noop").pk])
    assert calls == []
