import datetime as dt

import pytest
from django.core import mail
from freezegun import freeze_time

from orchestrator import signals
from orchestrator.models import AlertState, NotificationChannel, NotificationDelivery, ScheduledTask
from orchestrator.notifications import delivery as service
from orchestrator.notifications.events import Alert
from orchestrator.policies.alerts import DeliveryRetryPolicy
from tests.notifications.conftest import T0, failure_alert
from tests.support.fake_slack import WEBHOOK_PATH, Reply
from tests.utils import make_channel, make_run, make_scheduled_task

pytestmark = pytest.mark.django_db
Status = NotificationDelivery.Status
NO_JITTER = DeliveryRetryPolicy(jitter=False)


@pytest.fixture
def queued(monkeypatch):
    """Celery messages the service publishes (instead of a broker)."""
    from orchestrator.notifications.tasks import deliver_notification

    calls = []
    monkeypatch.setattr(
        deliver_notification, "apply_async", lambda args, **options: calls.append((args, options))
    )
    return calls


@pytest.fixture
def task():
    return make_scheduled_task("nightly-billing", "tests.sample_tasks.always_fails", max_retries=2)


def fail(task: ScheduledTask, event: str = "failure", **fields):
    status = "failed" if event == "failure" else "retried"
    run = make_run(
        task,
        status=status,
        attempt=3,
        max_attempts=3,
        error_type="RuntimeError",
        error_message="boom",
        **fields,
    )
    return run, service.notify_run(event, run)


def succeed(task: ScheduledTask):
    run = make_run(task, status="succeeded", attempt=1, max_attempts=3)
    return run, service.notify_run("recovery", run)


def test_a_final_failure_is_recorded_and_queued_after_commit(
    task, queued, django_capture_on_commit_callbacks
):
    channel = make_channel(is_default=True)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        run, (delivery,) = fail(task)
        assert queued == []  # nothing leaves before the commit
    assert len(callbacks) == 1
    assert delivery.status == Status.PENDING
    assert (delivery.channel, delivery.task_run, delivery.event) == (channel, run, "failure")
    ((delivery_id, message), options) = queued[0]
    assert delivery_id == delivery.pk
    assert options == {}
    alert = Alert.from_dict(message)
    assert (alert.task_name, alert.attempt, alert.error_message) == ("nightly-billing", 3, "boom")
    assert alert.run_url == f"http://testserver/admin/orchestrator/taskrun/{run.pk}/change/"
    assert "kwargs" not in message


def test_deliveries_go_through_the_notification_queue(
    task, queued, settings, django_capture_on_commit_callbacks
):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "NOTIFICATION_QUEUE": "alerts"}
    make_channel(is_default=True)
    with django_capture_on_commit_callbacks(execute=True):
        fail(task)
    assert queued[0][1] == {"queue": "alerts"}


def test_a_task_without_channels_uses_the_enabled_default_ones(task):
    default = make_channel("default", is_default=True)
    make_channel("other")
    make_channel("off", is_default=True, enabled=False)
    assert service.channels_for(task, "failure") == [default]


def test_selected_channels_replace_the_defaults_and_disabled_ones_are_skipped(task):
    make_channel("default", is_default=True)
    chosen = make_channel("chosen")
    off = make_channel("off", enabled=False)
    task.notification_channels.set([chosen, off])
    assert service.channels_for(task, "failure") == [chosen]
    task.notification_channels.set([off])
    assert service.channels_for(task, "failure") == []


def test_channels_only_get_the_events_they_subscribe_to(task, queued):
    make_channel("failures", is_default=True)  # default events: failure, recovery
    retries = make_channel("retries", is_default=True, events=["retry"])
    _, deliveries = fail(task, "retry")
    assert [d.channel for d in deliveries] == [retries]


def test_a_storm_inside_the_cooldown_sends_one_alert_and_counts_the_rest(task, queued):
    channel = make_channel(is_default=True, cooldown=900)
    with freeze_time("2026-03-01 12:00:00") as clock:
        statuses = []
        for _ in range(5):
            statuses.append(fail(task)[1][0].status)
            clock.tick(dt.timedelta(minutes=1))
        assert statuses == ["pending"] + ["suppressed"] * 4
        state = AlertState.objects.get(channel=channel, scheduled_task=task, event="failure")
        assert state.suppressed_count == 4
        clock.tick(dt.timedelta(minutes=15))
        _, (delivery,) = fail(task)
    assert delivery.status == Status.PENDING
    assert delivery.suppressed_count == 4
    suppressed = NotificationDelivery.objects.filter(status=Status.SUPPRESSED)
    assert suppressed.count() == 4
    assert all(d.suppressed_reason.startswith("cooldown of 900s") for d in suppressed)
    assert all(d.error == "" for d in suppressed)


def test_the_threshold_holds_alerts_until_n_failures_in_a_row(task, queued):
    make_channel(is_default=True, alert_after_failures=2, cooldown=0)
    first = fail(task)[1][0]
    second = fail(task)[1][0]
    assert (first.status, second.status) == ("suppressed", "pending")
    assert "1 final failure(s) in a row" in first.suppressed_reason
    succeed(task)
    # A success resets the count.
    assert fail(task)[1][0].status == "suppressed"


def test_the_alert_says_how_many_failures_in_a_row(
    task, queued, django_capture_on_commit_callbacks
):
    make_channel(is_default=True, alert_after_failures=2)
    with django_capture_on_commit_callbacks(execute=True):
        fail(task)
        fail(task)
    alert = Alert.from_dict(queued[-1][0][1])
    assert alert.consecutive_failures == 2


def test_a_recovery_is_sent_once_after_an_alerted_failure(task, queued):
    channel = make_channel(is_default=True)
    fail(task)
    _, (recovery,) = succeed(task)
    assert (recovery.event, recovery.status, recovery.channel) == ("recovery", "pending", channel)
    assert succeed(task)[1] == []


def test_both_success_signals_yield_a_single_recovery(task, queued):
    make_channel(is_default=True)
    fail(task)
    run = make_run(task, status="succeeded")
    for signal in (signals.task_succeeded, signals.task_recovered):
        signal.send_robust(sender=ScheduledTask, run=run, scheduled_task=task)
    assert NotificationDelivery.objects.filter(event="recovery").count() == 1


def test_no_recovery_for_a_channel_that_does_not_want_it(task, queued):
    make_channel(is_default=True, events=["failure"])
    fail(task)
    assert succeed(task)[1] == []
    assert not AlertState.objects.filter(awaiting_recovery=True).exists()


def test_no_recovery_when_the_failure_was_not_alerted(task, queued):
    make_channel(is_default=True, alert_after_failures=3)
    fail(task)
    assert succeed(task)[1] == []


def test_signals_reach_the_service(task, queued):
    make_channel(is_default=True, events=["retry", "failure", "recovery"], cooldown=0)
    run = make_run(task, status="retried")
    signals.task_retrying.send(sender=ScheduledTask, run=run, scheduled_task=task)
    run = make_run(task, status="failed")
    signals.task_failed.send(sender=ScheduledTask, run=run, scheduled_task=task)
    events = list(NotificationDelivery.objects.order_by("id").values_list("event", flat=True))
    assert events == ["retry", "failure"]


def test_a_broker_error_marks_the_delivery_failed(
    task, monkeypatch, django_capture_on_commit_callbacks
):
    from orchestrator.notifications.tasks import deliver_notification

    def refuse(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(deliver_notification, "apply_async", refuse)
    make_channel(is_default=True)
    with django_capture_on_commit_callbacks(execute=True):
        _, (delivery,) = fail(task)
    delivery.refresh_from_db()
    assert delivery.status == Status.FAILED
    assert delivery.error == "Could not queue the delivery: ConnectionError"


# --- sending -------------------------------------------------------------------------------------


def pending(channel: NotificationChannel, task=None) -> NotificationDelivery:
    return NotificationDelivery.objects.create(
        channel=channel, scheduled_task=task, event="failure", status=Status.PENDING
    )


def test_deliver_sends_and_records(task):
    delivery = pending(make_channel(), task)
    assert service.deliver(delivery.pk, failure_alert().to_dict()) == "sent"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.error) == ("sent", 1, "")
    assert delivery.sent_at is not None and delivery.finished_at is not None
    assert mail.outbox[0].subject == "[orchestrator] FAILED: nightly-billing (attempt 4/4)"


def test_429_then_500_then_200_delivers_one_message(task, fake_slack):
    fake_slack.script(
        WEBHOOK_PATH, Reply(429, "rate_limited", {"Retry-After": "2"}), Reply(500, "oops")
    )
    channel = make_channel(kind="slack", target=fake_slack.webhook_url())
    delivery = pending(channel, task)
    sleeps = []
    status = service.deliver(
        delivery.pk, failure_alert().to_dict(), policy=NO_JITTER, sleep=sleeps.append
    )
    assert status == "sent"
    assert sleeps == [2.0, 2.0]  # Retry-After, then the backoff for attempt 2
    assert len(fake_slack.delivered()) == 1
    assert [r.status for r in fake_slack.received()] == [429, 500, 200]
    delivery.refresh_from_db()
    assert delivery.attempts == 3


def test_a_permanent_error_is_not_retried_and_marks_the_channel(task, fake_slack):
    fake_slack.script(WEBHOOK_PATH, Reply(404, "no_service"))
    channel = make_channel(kind="slack", target=fake_slack.webhook_url())
    delivery = pending(channel, task)
    sleeps = []
    assert service.deliver(delivery.pk, failure_alert().to_dict(), sleep=sleeps.append) == "failed"
    assert sleeps == []
    delivery.refresh_from_db()
    channel.refresh_from_db()
    assert delivery.attempts == 1
    assert delivery.error == "Slack webhook answered HTTP 404 no_service (webhook not found)"
    assert channel.last_error == delivery.error
    assert channel.last_error_at is not None


def test_transient_errors_stop_after_the_attempt_limit(task, fake_slack):
    fake_slack.script(WEBHOOK_PATH, *[Reply(503, "")] * 10)
    channel = make_channel(kind="slack", target=fake_slack.webhook_url())
    delivery = pending(channel, task)
    sleeps = []
    status = service.deliver(
        delivery.pk, failure_alert().to_dict(), policy=NO_JITTER, sleep=sleeps.append
    )
    assert status == "failed"
    assert sleeps == [1.0, 2.0, 4.0, 8.0]
    delivery.refresh_from_db()
    channel.refresh_from_db()
    assert delivery.attempts == 5
    assert channel.last_error == ""  # a transient outage does not mark the channel


def test_a_retry_after_beyond_the_time_budget_is_queued_again_with_that_countdown(
    task, fake_slack, queued, django_capture_on_commit_callbacks
):
    fake_slack.script(WEBHOOK_PATH, Reply(429, "rate_limited", {"Retry-After": "120"}))
    delivery = pending(make_channel(kind="slack", target=fake_slack.webhook_url()), task)
    sleeps = []
    with freeze_time(T0), django_capture_on_commit_callbacks(execute=True):
        status = service.deliver(delivery.pk, failure_alert().to_dict(), sleep=sleeps.append)
    assert status == "pending"
    assert sleeps == []  # the worker slot is not held for the wait
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert delivery.retry_at == T0 + dt.timedelta(seconds=120)
    assert "rate limited" in delivery.error and "Retry-After" in delivery.error
    ((delivery_id, _), options) = queued[0]
    assert (delivery_id, options) == (delivery.pk, {"countdown": 120.0})
    # The queued copy arrives when the wait is over: Slack takes it this time, once.
    with freeze_time(T0 + dt.timedelta(seconds=121)):
        assert service.deliver(delivery.pk, failure_alert().to_dict()) == "sent"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.error) == ("sent", 2, "")
    assert len(fake_slack.received(WEBHOOK_PATH, status=429)) == 1
    assert len(fake_slack.delivered(WEBHOOK_PATH)) == 1


def test_a_retry_after_longer_than_the_broker_may_hold_is_queued_in_capped_steps(
    task, fake_slack, queued, settings, django_capture_on_commit_callbacks
):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "MAX_BROKER_COUNTDOWN": 600}
    fake_slack.script(WEBHOOK_PATH, Reply(429, "rate_limited", {"Retry-After": "1500"}))
    delivery = pending(make_channel(kind="slack", target=fake_slack.webhook_url()), task)
    delivery.created_at = T0
    delivery.save(update_fields=["created_at"])
    with freeze_time(T0), django_capture_on_commit_callbacks(execute=True):
        assert service.deliver(delivery.pk, failure_alert().to_dict()) == "pending"
    # Each early copy queues itself again for the rest of the wait, and sends nothing.
    with (
        freeze_time(T0 + dt.timedelta(seconds=600)),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert service.deliver(delivery.pk, failure_alert().to_dict()) == "pending"
    with (
        freeze_time(T0 + dt.timedelta(seconds=1200)),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert service.deliver(delivery.pk, failure_alert().to_dict()) == "pending"
    assert [options["countdown"] for _, options in queued] == [600, 600, 300.0]
    assert len(fake_slack.received(WEBHOOK_PATH)) == 1


def test_a_retry_after_past_the_give_up_time_fails_the_delivery(task, fake_slack, queued):
    fake_slack.script(WEBHOOK_PATH, Reply(429, "rate_limited", {"Retry-After": "7200"}))
    delivery = pending(make_channel(kind="slack", target=fake_slack.webhook_url()), task)
    assert service.deliver(delivery.pk, failure_alert().to_dict()) == "failed"
    delivery.refresh_from_db()
    assert "7200 s" in delivery.error and "given up" in delivery.error
    assert queued == []


def test_a_second_message_arriving_mid_send_finds_the_delivery_taken(task, monkeypatch):
    delivery = pending(make_channel(), task)
    inner: list[str] = []
    real_send = service.send_with_retries

    def send_and_race(*args, **kwargs):
        # The maintenance pass re-queued it, and that copy reaches another worker now.
        inner.append(service.deliver(delivery.pk, failure_alert().to_dict()))
        return real_send(*args, **kwargs)

    monkeypatch.setattr(service, "send_with_retries", send_and_race)
    assert service.deliver(delivery.pk, failure_alert().to_dict()) == "sent"
    assert inner == ["sending"]
    assert len(mail.outbox) == 1


def test_a_redelivered_message_is_not_sent_twice(task):
    delivery = pending(make_channel(), task)
    service.deliver(delivery.pk, failure_alert().to_dict())
    assert service.deliver(delivery.pk, failure_alert().to_dict()) == "sent"
    assert len(mail.outbox) == 1


def test_a_channel_disabled_before_sending_sends_nothing(task):
    delivery = pending(make_channel(enabled=False), task)
    assert service.deliver(delivery.pk, failure_alert().to_dict()) == "failed"
    assert mail.outbox == []


def test_a_buggy_channel_is_a_permanent_error(task, monkeypatch):
    from orchestrator.notifications.email import EmailChannel

    def broken(self, message):
        raise KeyError("secret-ish detail")

    monkeypatch.setattr(EmailChannel, "notify", broken)
    channel = make_channel()
    delivery = pending(channel, task)
    assert service.deliver(delivery.pk, failure_alert().to_dict()) == "failed"
    delivery.refresh_from_db()
    assert delivery.error == "Unexpected KeyError in the email channel"
    assert delivery.attempts == 1


def test_retry_logs_and_stored_errors_hold_no_secret(task, fake_slack, caplog):
    fake_slack.script(WEBHOOK_PATH, Reply(500, ""), Reply(404, "no_service"))
    channel = make_channel(kind="slack", target=fake_slack.webhook_url())
    delivery = pending(channel, task)
    service.deliver(delivery.pk, failure_alert().to_dict(), sleep=lambda s: None)
    delivery.refresh_from_db()
    assert "retrying in" in caplog.text
    assert "s3cr3tW3bh00kT0k3n" not in caplog.text
    assert "s3cr3tW3bh00kT0k3n" not in delivery.error


def test_a_test_notification_is_a_delivery_that_clears_or_sets_the_last_error(
    fake_slack, deliver_now, django_capture_on_commit_callbacks
):
    channel = make_channel(kind="slack", target=fake_slack.webhook_url())
    fake_slack.script(WEBHOOK_PATH, Reply(403, "invalid_token"), Reply(503, ""))
    with django_capture_on_commit_callbacks(execute=True):
        failed = service.queue_test_notification(channel)
    failed.refresh_from_db()
    assert (failed.event, failed.status, failed.attempts) == ("test", "failed", 1)
    channel.refresh_from_db()
    assert channel.last_error == "Slack webhook answered HTTP 403 invalid_token"
    with django_capture_on_commit_callbacks(execute=True):
        transient = service.queue_test_notification(channel)
    transient.refresh_from_db()
    # A transient error is tried once too, and still said on the channel.
    assert (transient.status, transient.attempts) == ("failed", 1)
    channel.refresh_from_db()
    assert channel.last_error == "Slack webhook answered HTTP 503"
    with django_capture_on_commit_callbacks(execute=True):
        sent = service.queue_test_notification(channel)
    sent.refresh_from_db()
    assert sent.status == "sent"
    channel.refresh_from_db()
    assert (channel.last_error, channel.last_error_at) == ("", None)
    assert fake_slack.delivered()[0].json["blocks"][0]["text"]["text"].startswith(":wave: TEST")


@pytest.mark.django_db(transaction=True)
def test_simultaneous_failures_on_two_workers_send_one_alert(queued):
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    task = make_scheduled_task("racy", "tests.sample_tasks.always_fails", max_retries=0)
    make_channel(is_default=True, cooldown=900)
    runs = [make_run(task, status="failed") for _ in range(4)]
    barrier = Barrier(len(runs))

    def fail_now(run):
        try:
            barrier.wait()
            return [d.status for d in service.notify_run("failure", run)]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(len(runs)) as pool:
        statuses = sorted(s for result in pool.map(fail_now, runs) for s in result)
    assert statuses == ["pending", "suppressed", "suppressed", "suppressed"]
    assert AlertState.objects.get().suppressed_count == 3


@pytest.mark.django_db
def test_an_alert_from_a_run_carries_no_kwargs_and_a_truncated_error():
    task = make_scheduled_task(
        "billing", "tests.sample_tasks.echo", kwargs={"password": "hunter2"}, queue="money"
    )
    run = make_run(
        task,
        status="retried",
        attempt=2,
        max_attempts=4,
        error_type="ValueError",
        error_message="x" * 2000,
        duration=dt.timedelta(seconds=3),
        next_retry_at=T0,
    )
    alert = service.alert_from_run("retry", run)
    assert alert.task_name == "billing"
    assert alert.definition == "echo"
    assert (alert.attempt, alert.max_attempts, alert.duration) == (2, 4, 3.0)
    assert alert.queue == "money"
    assert len(alert.error_message) == 500 and alert.error_message.endswith("…")
    assert alert.next_retry_at == T0
    assert alert.run_url == f"http://testserver/admin/orchestrator/taskrun/{run.pk}/change/"
    assert "hunter2" not in str(alert.to_dict())
    assert service.alert_from_run("failure", run).next_retry_at is None


@pytest.mark.django_db
def test_a_failure_alert_carries_the_last_lines_of_the_run_log():
    task = make_scheduled_task("billing", "tests.sample_tasks.echo")
    log = "".join(f"2026-01-01 00:00:{n:02d} INFO billing: step {n}\n" for n in range(30))
    run = make_run(task, status="failed", error_type="ValueError", log=log)

    alert = service.alert_from_run("failure", run)
    assert alert.log_tail.splitlines() == [line for line in log.splitlines()[-20:]]
    assert service.alert_from_run("retry", run).log_tail == alert.log_tail
    assert "log_tail" in alert.to_dict()  # it travels in the delivery message
    # A recovery is a success: its log is on the run's page, not in the alert.
    assert service.alert_from_run("recovery", run).log_tail == ""
