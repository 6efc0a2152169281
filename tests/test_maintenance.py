"""The maintenance pass: retries held in the database, stuck runs, alerts whose message was lost."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any
from unittest import mock

import pytest
from django.core import mail
from django.db import connection, connections
from django.utils import timezone
from freezegun import freeze_time

from orchestrator import maintenance, signals
from orchestrator.maintenance import (
    STUCK,
    MaintenanceReport,
    mark_stuck_runs,
    requeue_stale_deliveries,
    run_maintenance,
    send_due_retries,
)
from orchestrator.models import Event, NotificationDelivery, ScheduledTask, TaskRun
from orchestrator.notifications.tasks import deliver_notification
from orchestrator.tasks import run_scheduled_task
from tests.utils import make_channel, make_run, make_scheduled_task

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
TICK = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)


def at(moment: dt.datetime = NOW):
    return lambda: moment


@pytest.fixture(autouse=True)
def redis_transport(settings):
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "BROKER_TRANSPORT": "redis",
        "MAX_BROKER_COUNTDOWN": 1800,
    }


@pytest.fixture
def sent():
    """Every retry message the maintenance pass sends, instead of the broker."""
    with mock.patch.object(run_scheduled_task, "apply_async") as apply_async:
        yield apply_async


def held_retry(task: ScheduledTask, due_in: float, **fields: Any) -> TaskRun:
    """A retried attempt that failed two hours ago and whose (long) retry is due ``due_in`` s
    from NOW: kept in the database, never sent."""
    values: dict[str, Any] = {
        "status": TaskRun.Status.RETRIED,
        "attempt": 2,
        "max_attempts": 4,
        "celery_task_id": "c-1",
        "started_at": NOW - dt.timedelta(hours=2),
        "finished_at": NOW - dt.timedelta(hours=2),
        "next_retry_at": NOW + dt.timedelta(seconds=due_in),
        "scheduled_for": TICK,
    }
    values.update(fields)
    return make_run(task, **values)


# --- retries held in the database -------------------------------------------------------------


def test_a_held_retry_is_sent_when_due_with_everything_its_attempt_would_have_sent(sent) -> None:
    task = make_scheduled_task(
        "nightly", queue="reports", priority=9, expires=30, time_limit=20, max_retries=3
    )
    run = held_retry(task, due_in=-5)

    report = send_due_retries(now=at())

    sent.assert_called_once_with(
        args=[task.pk],
        # The tick travels as the attempt's own retries carry it: one run per tick still holds.
        kwargs={"trigger": "schedule", "scheduled_for": TICK.isoformat()},
        task_id="c-1",
        retries=2,  # the next attempt is numbered 3
        countdown=0.0,
        queue="reports",
        priority=0,  # Redis serves 0 first
        expires=30.0,
        time_limit=20,
    )
    run.refresh_from_db()
    assert run.retry_sent_at == NOW
    assert (report.retries_sent, report.retries_not_sent) == (1, 0)


@pytest.mark.parametrize(
    ("due_in", "countdown"),
    [(-3600, 0.0), (0, 0.0), (45, 45.0), (60, 60.0), (61, None)],
)
def test_held_retries_go_up_to_a_minute_early_with_the_rest_as_countdown(
    sent, due_in: float, countdown: float | None
) -> None:
    # A pass runs every minute: sending a little ahead is what starts a retry on time.
    held_retry(make_scheduled_task("t"), due_in=due_in)
    send_due_retries(now=at())
    if countdown is None:
        sent.assert_not_called()
    else:
        assert sent.call_args.kwargs["countdown"] == countdown


def test_sending_ahead_never_exceeds_what_the_broker_may_hold(settings, sent) -> None:
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "MAX_BROKER_COUNTDOWN": 10}
    task = make_scheduled_task("t")
    held_retry(task, due_in=11)
    send_due_retries(now=at())
    sent.assert_not_called()
    held_retry(task, due_in=10, attempt=3)
    send_due_retries(now=at())
    assert sent.call_args.kwargs["countdown"] == 10.0


def test_a_manual_run_keeps_its_trigger_and_has_no_tick(sent) -> None:
    held_retry(make_scheduled_task("t"), due_in=0, trigger="manual", scheduled_for=None)
    send_due_retries(now=at())
    assert sent.call_args.kwargs["kwargs"] == {"trigger": "manual"}


def test_a_sent_retry_is_claimed_and_never_sent_again(sent) -> None:
    held_retry(make_scheduled_task("t"), due_in=0)
    assert send_due_retries(now=at()).retries_sent == 1
    assert send_due_retries(now=at(NOW + dt.timedelta(minutes=1))).retries_sent == 0
    assert sent.call_count == 1


def test_a_failed_send_releases_the_claim_and_the_next_pass_sends_it(sent, caplog) -> None:
    run = held_retry(make_scheduled_task("t"), due_in=0)
    sent.side_effect = ConnectionError("broker down")

    report = send_due_retries(now=at())

    assert (report.retries_sent, report.retries_not_sent) == (0, 1)
    run.refresh_from_db()
    assert run.retry_sent_at is None
    assert "Could not send the retry of task 't' after attempt 2" in caplog.text
    sent.side_effect = None
    later = NOW + dt.timedelta(minutes=1)
    assert send_due_retries(now=at(later)).retries_sent == 1
    run.refresh_from_db()
    assert run.retry_sent_at == later


def test_a_short_retry_whose_send_failed_is_sent_again_five_minutes_after_it_was_due(
    sent,
) -> None:
    task = make_scheduled_task("t")

    def unsent_short_retry(failed_ago: float, attempt: int) -> TaskRun:
        # A 60 s retry, meant for the broker: self.retry() failed to publish it.
        finished = NOW - dt.timedelta(seconds=failed_ago)
        return held_retry(
            task,
            due_in=0,
            attempt=attempt,
            celery_task_id=f"c-{attempt}",
            finished_at=finished,
            next_retry_at=finished + dt.timedelta(seconds=60),
        )

    overdue = unsent_short_retry(failed_ago=360, attempt=1)  # due 5 min ago
    unsent_short_retry(failed_ago=359, attempt=2)  # still within the grace

    report = send_due_retries(now=at())

    assert report.retries_sent == 1
    assert sent.call_args.kwargs["task_id"] == overdue.celery_task_id


def test_a_retry_whose_next_attempt_already_ran_is_marked_sent_not_sent_again(sent) -> None:
    task = make_scheduled_task("t")
    # The broker had it; only the record of the send was lost.
    finished = NOW - dt.timedelta(minutes=10)
    run = held_retry(task, due_in=0, finished_at=finished, next_retry_at=finished)
    make_run(task, attempt=3, celery_task_id="c-1", scheduled_for=TICK)

    report = send_due_retries(now=at())

    sent.assert_not_called()
    assert report.retries_already_run == 1
    run.refresh_from_db()
    assert run.retry_sent_at == NOW


def test_only_retried_rows_without_a_send_are_looked_at(sent) -> None:
    task = make_scheduled_task("t")
    held_retry(task, due_in=0, retry_sent_at=NOW - dt.timedelta(hours=2))
    held_retry(task, due_in=0, attempt=3, status=TaskRun.Status.FAILED)
    held_retry(task, due_in=0, attempt=4, status=TaskRun.Status.LOST)
    assert send_due_retries(now=at()).retries_sent == 0
    sent.assert_not_called()


@freeze_time(NOW)
def test_a_long_retry_runs_end_to_end_as_the_next_attempt_of_its_tick(tmp_path) -> None:
    task = make_scheduled_task(
        "slow-flaky",
        "tests.sample_tasks.flaky",
        kwargs={"counter_file": str(tmp_path / "calls"), "failures": 1},
        max_retries=2,
        retry_backoff="fixed",
        retry_delay=7200,
        retry_backoff_max=7200,
    )
    result = run_scheduled_task.apply(
        args=[task.pk], headers={"periodic_task_name": f"orchestrator:{task.pk}"}
    )
    first = TaskRun.objects.get()
    assert (first.status, first.retry_sent_at) == (TaskRun.Status.RETRIED, None)
    assert send_due_retries().retries_sent == 0  # two hours early

    def run_now(args, kwargs, task_id, retries, **options):
        return run_scheduled_task.apply(args=args, kwargs=kwargs, task_id=task_id, retries=retries)

    with (
        freeze_time(NOW + dt.timedelta(hours=2)),
        mock.patch.object(run_scheduled_task, "apply_async", side_effect=run_now),
    ):
        assert send_due_retries().retries_sent == 1

    runs = list(TaskRun.objects.order_by("attempt"))
    assert [(r.attempt, r.status) for r in runs] == [(1, "retried"), (2, "succeeded")]
    assert runs[1].celery_task_id == result.id == runs[0].celery_task_id
    assert runs[1].scheduled_for == runs[0].scheduled_for is not None
    assert runs[0].retry_sent_at == NOW + dt.timedelta(hours=2)


@pytest.mark.django_db(transaction=True)
def test_two_passes_at_the_same_moment_send_each_retry_once() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs a database that serves two connections at once")
    task = make_scheduled_task("t")
    runs = [held_retry(task, due_in=0, attempt=n, celery_task_id=f"c-{n}") for n in range(1, 21)]
    real_due_retries = maintenance.due_retries
    both_loaded = threading.Barrier(2, timeout=10)
    sends: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def due_retries_then_wait(moment):
        rows = real_due_retries(moment)
        both_loaded.wait()  # both passes saw every row as unsent before either claims one
        return rows

    def record(**message):
        with lock:
            sends.append(message["task_id"])

    def sweep() -> None:
        try:
            send_due_retries(now=at())
        except BaseException as err:
            errors.append(err)
        finally:
            connections.close_all()

    with (
        mock.patch.object(maintenance, "due_retries", due_retries_then_wait),
        mock.patch.object(run_scheduled_task, "apply_async", side_effect=record),
    ):
        threads = [threading.Thread(target=sweep) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert errors == []
    assert sorted(sends) == sorted(r.celery_task_id for r in runs)
    assert not TaskRun.objects.filter(retry_sent_at__isnull=True).exists()


# --- stuck runs -------------------------------------------------------------------------------


@pytest.fixture
def failed_signals():
    received: list[TaskRun] = []

    def on_failed(sender: Any, run: TaskRun, **kwargs: Any) -> None:
        received.append(run)

    signals.task_failed.connect(on_failed, weak=False)
    yield received
    signals.task_failed.disconnect(on_failed)


def running_since(task: ScheduledTask, seconds: float, **fields: Any) -> TaskRun:
    """A run still ``running``, started ``seconds`` ago under the task's current time limit."""
    fields.setdefault("time_limit", task.time_limit)
    return make_run(
        task,
        status=TaskRun.Status.RUNNING,
        started_at=NOW - dt.timedelta(seconds=seconds),
        **fields,
    )


def test_a_run_past_its_time_limit_and_a_minute_is_marked_lost_and_alerted(
    failed_signals,
) -> None:
    task = make_scheduled_task("limited", time_limit=20)
    stuck = running_since(task, 81)
    recent = running_since(task, 80)

    report = mark_stuck_runs(now=at())

    stuck.refresh_from_db()
    assert (stuck.status, stuck.error_type) == (TaskRun.Status.LOST, STUCK)
    assert "past its time limit of 20 s" in stuck.error_message
    assert (stuck.finished_at, stuck.duration) == (NOW, dt.timedelta(seconds=81))
    recent.refresh_from_db()
    assert recent.status == TaskRun.Status.RUNNING
    assert [r.pk for r in failed_signals] == [stuck.pk]
    assert failed_signals[0].status == TaskRun.Status.LOST
    assert report.runs_lost == 1


def test_a_time_limit_lowered_mid_run_does_not_make_the_run_stuck(failed_signals) -> None:
    task = make_scheduled_task("limited", time_limit=600)
    run = running_since(task, 300)  # started under the 600 s limit
    task.time_limit = 20
    task.save()

    assert mark_stuck_runs(now=at()).runs_lost == 0
    run.refresh_from_db()
    assert run.status == TaskRun.Status.RUNNING
    assert failed_signals == []


def test_a_run_records_the_time_limit_in_force_when_it_started() -> None:
    from orchestrator.dispatcher import Attempt, run_task

    task = make_scheduled_task("limited", time_limit=45)
    outcome = run_task(Attempt(task.pk, trigger="manual"))
    assert outcome.run is not None and outcome.run.time_limit == 45


def test_without_a_time_limit_the_stuck_run_timeout_applies(settings, failed_signals) -> None:
    task = make_scheduled_task("unlimited")
    stuck = running_since(task, 6 * 3600 + 1)
    running_since(task, 6 * 3600)

    assert mark_stuck_runs(now=at()).runs_lost == 1
    stuck.refresh_from_db()
    assert "STUCK_RUN_TIMEOUT" in stuck.error_message

    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "STUCK_RUN_TIMEOUT": None}
    running_since(task, 30 * 86400)
    assert mark_stuck_runs(now=at()).runs_lost == 0


def test_a_stuck_run_is_alerted_once_however_many_passes(failed_signals) -> None:
    task = make_scheduled_task("limited", time_limit=5)
    running_since(task, 3600)
    mark_stuck_runs(now=at())
    mark_stuck_runs(now=at(NOW + dt.timedelta(minutes=1)))
    assert len(failed_signals) == 1


def test_an_attempt_that_finishes_while_the_pass_looks_is_left_as_it_ended(
    failed_signals,
) -> None:
    task = make_scheduled_task("limited", time_limit=5)
    run = running_since(task, 3600)
    real_reason = maintenance._stuck_reason

    def finish_first(candidate: TaskRun, moment: dt.datetime) -> str | None:
        TaskRun.objects.filter(pk=candidate.pk).update(status=TaskRun.Status.SUCCEEDED)
        return real_reason(candidate, moment)

    with mock.patch.object(maintenance, "_stuck_reason", finish_first):
        assert mark_stuck_runs(now=at()).runs_lost == 0
    run.refresh_from_db()
    assert run.status == TaskRun.Status.SUCCEEDED
    assert failed_signals == []


def test_a_stuck_run_pages_the_failure_channels_as_a_final_failure(
    django_capture_on_commit_callbacks,
) -> None:
    make_channel("ops", is_default=True)
    task = make_scheduled_task("limited", time_limit=5)
    run = running_since(task, 3600)
    with (
        mock.patch.object(deliver_notification, "apply_async") as queued,
        django_capture_on_commit_callbacks(execute=True),
    ):
        mark_stuck_runs(now=at())

    delivery = NotificationDelivery.objects.get()
    assert (delivery.task_run_id, delivery.event, delivery.status) == (
        run.pk,
        Event.FAILURE,
        NotificationDelivery.Status.PENDING,
    )
    message = queued.call_args.kwargs["args"][1]
    assert (message["event"], message["error_type"]) == ("failure", STUCK)


# --- alerts whose broker message was lost -----------------------------------------------------


@pytest.fixture
def queued():
    with mock.patch.object(deliver_notification, "apply_async") as apply_async:
        yield apply_async


def pending_delivery(minutes_ago: float, event: str = Event.FAILURE, **fields: Any):
    channel = fields.pop("channel", None) or make_channel("ops")
    task = make_scheduled_task("alerting")
    run = fields.pop("run", None) or make_run(
        task, status=TaskRun.Status.FAILED, error_type="RuntimeError", error_message="boom"
    )
    return NotificationDelivery.objects.create(
        channel=channel,
        scheduled_task=task,
        task_run=run,
        event=event,
        status=NotificationDelivery.Status.PENDING,
        created_at=NOW - dt.timedelta(minutes=minutes_ago),
        **fields,
    )


def test_an_alert_pending_five_minutes_is_queued_again_once(
    queued, django_capture_on_commit_callbacks
) -> None:
    delivery = pending_delivery(minutes_ago=5)

    with django_capture_on_commit_callbacks(execute=True):
        report = requeue_stale_deliveries(now=at())
        again = requeue_stale_deliveries(now=at(NOW + dt.timedelta(minutes=1)))

    assert (report.deliveries_requeued, again.deliveries_requeued) == (1, 0)
    assert queued.call_count == 1
    delivery_id, message = queued.call_args.kwargs["args"]
    assert delivery_id == delivery.pk
    assert (message["event"], message["task_name"], message["error_message"]) == (
        "failure",
        "alerting",
        "boom",
    )
    delivery.refresh_from_db()
    assert delivery.status == NotificationDelivery.Status.PENDING
    assert (delivery.requeued_at, delivery.error) == (NOW, "")


def test_an_alert_abandoned_mid_send_is_marked_failed_after_an_hour(queued) -> None:
    abandoned = pending_delivery(minutes_ago=61)
    recent = NotificationDelivery.objects.create(
        channel=abandoned.channel,
        scheduled_task=abandoned.scheduled_task,
        task_run=abandoned.task_run,
        event=Event.FAILURE,
        status=NotificationDelivery.Status.PENDING,
        created_at=NOW - dt.timedelta(minutes=59),
    )
    NotificationDelivery.objects.filter(pk__in=[abandoned.pk, recent.pk]).update(
        status=NotificationDelivery.Status.SENDING
    )

    assert requeue_stale_deliveries(now=at()).deliveries_failed == 1

    abandoned.refresh_from_db()
    recent.refresh_from_db()
    assert abandoned.status == NotificationDelivery.Status.FAILED
    assert "stopped before it finished" in abandoned.error
    assert recent.status == NotificationDelivery.Status.SENDING
    queued.assert_not_called()


def test_a_younger_pending_alert_is_left_to_its_own_message(queued) -> None:
    pending_delivery(minutes_ago=4.9)
    assert requeue_stale_deliveries(now=at()).deliveries_requeued == 0


def test_a_requeued_alert_still_pending_five_minutes_later_is_marked_failed(queued) -> None:
    requeued_at = NOW - dt.timedelta(minutes=5)
    delivery = pending_delivery(minutes_ago=30, requeued_at=requeued_at)
    assert requeue_stale_deliveries(now=at(NOW - dt.timedelta(seconds=1))).changed is False

    report = requeue_stale_deliveries(now=at())

    assert report.deliveries_failed == 1
    delivery.refresh_from_db()
    assert delivery.status == NotificationDelivery.Status.FAILED
    assert delivery.finished_at == NOW
    assert "so was the one re-queued at" in delivery.error
    queued.assert_not_called()


def test_an_alert_that_cannot_be_rebuilt_is_marked_failed_at_once(queued) -> None:
    report_delivery = pending_delivery(minutes_ago=10, event=Event.REPORT, run=None)
    NotificationDelivery.objects.filter(pk=report_delivery.pk).update(task_run=None)

    assert requeue_stale_deliveries(now=at()).deliveries_failed == 1
    report_delivery.refresh_from_db()
    assert report_delivery.status == NotificationDelivery.Status.FAILED
    assert "cannot be queued again" in report_delivery.error


def test_a_lost_test_notification_is_queued_again_like_an_alert(
    queued, django_capture_on_commit_callbacks
) -> None:
    delivery = NotificationDelivery.objects.create(
        channel=make_channel("ops"),
        event="test",
        status=NotificationDelivery.Status.PENDING,
        created_at=NOW - dt.timedelta(minutes=6),
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert requeue_stale_deliveries(now=at()).deliveries_requeued == 1
    delivery_id, message = queued.call_args.kwargs["args"]
    assert (delivery_id, message["event"]) == (delivery.pk, "test")


def test_a_requeued_alert_is_delivered_by_the_notification_service(
    django_capture_on_commit_callbacks,
) -> None:
    delivery = pending_delivery(minutes_ago=6, channel=make_channel("ops", target="ops@x.io"))

    def deliver_now(args, **options):
        return deliver_notification.apply(args=args)

    with (
        mock.patch.object(deliver_notification, "apply_async", side_effect=deliver_now),
        django_capture_on_commit_callbacks(execute=True),
    ):
        requeue_stale_deliveries(now=at())

    delivery.refresh_from_db()
    assert delivery.status == NotificationDelivery.Status.SENT
    assert [m.to for m in mail.outbox] == [["ops@x.io"]]
    assert "alerting" in mail.outbox[0].subject


# --- the pass ---------------------------------------------------------------------------------


def test_one_failing_part_does_not_stop_the_others(sent, caplog) -> None:
    task = make_scheduled_task("t", time_limit=5)
    held_retry(task, due_in=0)
    running_since(task, 3600)
    with mock.patch.object(maintenance, "due_retries", side_effect=RuntimeError("database hiccup")):
        report = run_maintenance(now=at())
    assert report == MaintenanceReport(runs_lost=1)
    assert "Maintenance step send_due_retries failed" in caplog.text
    assert str(report).startswith("retries sent 0, retries already run 0")


# --- pauses that ended, runs that never started ------------------------------------------------


def test_a_pause_that_ended_is_resumed_by_the_pass() -> None:
    task = make_scheduled_task("paused")
    task.pause("window", until=timezone.now() + dt.timedelta(minutes=1))
    ScheduledTask.objects.filter(pk=task.pk).update(paused_until=NOW - dt.timedelta(seconds=1))
    report = run_maintenance(now=at())
    task.refresh_from_db()
    assert (report.tasks_resumed, task.paused) == (1, False)


def test_a_run_still_queued_hours_later_is_marked_lost() -> None:
    task = make_scheduled_task("stale")
    old = make_run(task, status=TaskRun.Status.QUEUED, started_at=NOW - dt.timedelta(hours=7))
    recent = make_run(task, status=TaskRun.Status.QUEUED, started_at=NOW - dt.timedelta(hours=5))
    report = run_maintenance(now=at())
    old.refresh_from_db()
    recent.refresh_from_db()
    assert (report.queued_runs_lost, old.status, recent.status) == (1, "lost", "queued")
    assert old.error_message.startswith("Never started")


def test_a_rate_limited_alert_is_left_to_its_countdown_then_requeued_once_if_lost(
    queued, django_capture_on_commit_callbacks
) -> None:
    # Queued an hour ago, rate limited since: Slack asked to wait until NOW + 10 min.
    retry_at = NOW + dt.timedelta(minutes=10)
    delivery = pending_delivery(minutes_ago=60, retry_at=retry_at)

    with django_capture_on_commit_callbacks(execute=True):
        # Its countdown message is in the broker: neither re-sent nor given up meanwhile.
        for moment in (NOW, retry_at, retry_at + dt.timedelta(minutes=4)):
            assert requeue_stale_deliveries(now=at(moment)).changed is False
        # Well past its time and still pending: that message was lost; re-queued once.
        late = requeue_stale_deliveries(now=at(retry_at + dt.timedelta(minutes=5)))
    assert late.deliveries_requeued == 1
    assert queued.call_count == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.requeued_at) == (
        NotificationDelivery.Status.PENDING,
        retry_at + dt.timedelta(minutes=5),
    )
