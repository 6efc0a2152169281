"""Alerts through a real Celery worker and broker (Redis or RabbitMQ), PostgreSQL, a Slack
look-alike and SMTP.

The worker runs the scheduled task through the dispatcher; its signals queue the deliveries on
the notification queue, which the worker (or a second one) consumes. Assertions read what the
fake Slack and the SMTP server received and the delivery log the worker wrote.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time

import pytest

import tests.celery_app  # noqa: F401  (makes the test project's app current for enqueue())
from orchestrator.dispatcher import enqueue
from orchestrator.models import NotificationDelivery, TaskRun
from tests.integration.conftest import wait_until
from tests.support.fake_slack import API_PATH, WEBHOOK_PATH, Reply
from tests.support.smtp import free_port
from tests.utils import make_channel, make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "notifications"
FINISHED = [NotificationDelivery.Status.SENT, NotificationDelivery.Status.FAILED]


def worker_env(fake_slack=None, smtp=None, **extra: str) -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.support.worker_settings",
        "ORCHESTRATOR_NOTIFICATION_QUEUE": QUEUE,
        # Quick backoff so a dead Slack is given up on within seconds.
        "ORCHESTRATOR_NOTIFICATION_RETRY": json.dumps(
            {"max_attempts": 4, "max_seconds": 20, "base_delay": 0.2, "max_delay": 1}
        ),
    }
    if fake_slack is not None:
        env.update(fake_slack.worker_env())
        env["ORCHESTRATOR_SLACK_BOT_TOKEN"] = fake_slack.token
    if smtp is not None:
        env.update(smtp.env())
    env.update(extra)
    return env


def finished_deliveries(count: int) -> list[NotificationDelivery] | None:
    done = list(NotificationDelivery.objects.filter(status__in=FINISHED).order_by("id"))
    return done if len(done) >= count else None


def runs_of(task_id: int, count: int) -> list[TaskRun] | None:
    runs = list(TaskRun.objects.filter(scheduled_task_id=task_id).order_by("started_at", "id"))
    if len(runs) >= count and all(r.status != TaskRun.Status.RUNNING for r in runs):
        return runs
    return None


def test_a_final_failure_reaches_slack_webhook_slack_bot_and_smtp(
    start_worker, fake_slack, smtp_server
):
    webhook = make_channel("webhook", kind="slack", target=fake_slack.webhook_url())
    bot = make_channel("bot", kind="slack", target="#ops")
    mailbox = make_channel("mail", kind="email", target="oncall@example.com")
    task = make_scheduled_task(
        "nightly-billing",
        "tests.sample_tasks.always_fails",
        kwargs={"message": "ledger locked"},
        max_retries=0,
    )
    task.notification_channels.set([webhook, bot, mailbox])
    worker = start_worker(queues=["celery", QUEUE], **worker_env(fake_slack, smtp_server))

    enqueue(task)
    deliveries = wait_until(lambda: finished_deliveries(3), timeout=60)

    assert {(d.channel.name, d.status, d.attempts) for d in deliveries} == {
        ("webhook", "sent", 1),
        ("bot", "sent", 1),
        ("mail", "sent", 1),
    }
    (hook,) = fake_slack.delivered(WEBHOOK_PATH)
    assert hook.json["blocks"][0]["text"]["text"] == (
        ":red_circle: FAILED: nightly-billing (attempt 1/1)"
    )
    run = TaskRun.objects.get(scheduled_task=task)
    assert hook.json["blocks"][-1]["elements"][0]["url"] == (
        f"http://testserver/admin/orchestrator/taskrun/{run.pk}/change/"
    )
    (post,) = fake_slack.delivered(API_PATH)
    assert post.headers["authorization"] == f"Bearer {fake_slack.token}"
    assert "FAILED: nightly-billing" in post.body.decode()
    (email,) = smtp_server.messages
    assert email.rcpt_tos == ["oncall@example.com"]
    assert email.message["Subject"] == "[orchestrator] FAILED: nightly-billing (attempt 1/1)"
    assert "RuntimeError" in email.part("text/plain")
    assert "ledger locked" in email.part("text/html")
    # The worker's log names the deliveries but never a secret.
    log = worker.log()
    assert "orchestrator.deliver_notification" in log
    assert "s3cr3tW3bh00kT0k3n" not in log
    assert fake_slack.token not in log


def test_429_then_500_then_200_delivers_exactly_one_message(start_worker, fake_slack):
    fake_slack.script(
        WEBHOOK_PATH, Reply(429, "rate_limited", {"Retry-After": "1"}), Reply(500, "oops")
    )
    channel = make_channel("webhook", kind="slack", target=fake_slack.webhook_url())
    task = make_scheduled_task("sync", "tests.sample_tasks.always_fails", max_retries=0)
    task.notification_channels.set([channel])
    start_worker(queues=["celery", QUEUE], **worker_env(fake_slack))

    enqueue(task)
    (delivery,) = wait_until(lambda: finished_deliveries(1), timeout=60)

    assert (delivery.status, delivery.attempts) == ("sent", 3)
    requests = fake_slack.received(WEBHOOK_PATH)
    assert [r.status for r in requests] == [429, 500, 200]
    assert len(fake_slack.delivered()) == 1
    # The identical payload was posted each time; Slack kept only the last one.
    assert requests[0].body == requests[2].body


def test_a_retry_after_beyond_the_budget_is_sent_once_after_its_countdown(start_worker, fake_slack):
    # The budget is 1 s; Slack asks for 3: the worker defers the delivery through the broker.
    fake_slack.script(WEBHOOK_PATH, Reply(429, "rate_limited", {"Retry-After": "3"}))
    channel = make_channel("webhook", kind="slack", target=fake_slack.webhook_url())
    task = make_scheduled_task("sync", "tests.sample_tasks.always_fails", max_retries=0)
    task.notification_channels.set([channel])
    env = worker_env(fake_slack)
    env["ORCHESTRATOR_NOTIFICATION_RETRY"] = json.dumps(
        {"max_attempts": 4, "max_seconds": 1, "base_delay": 0.2, "max_delay": 1}
    )
    start_worker(queues=["celery", QUEUE], **env)

    enqueue(task)
    deferred = wait_until(
        lambda: NotificationDelivery.objects.filter(retry_at__isnull=False).first(), timeout=60
    )
    assert deferred.status == NotificationDelivery.Status.PENDING
    (delivery,) = wait_until(lambda: finished_deliveries(1), timeout=60)

    assert (delivery.status, delivery.attempts, delivery.error) == ("sent", 2, "")
    first, second = fake_slack.received(WEBHOOK_PATH)
    assert (first.status, second.status) == (429, 200)
    # Sent when Slack said it could be, not before (within the countdown's tolerance).
    assert delivery.sent_at >= deferred.retry_at - dt.timedelta(seconds=1)
    assert len(fake_slack.delivered()) == 1


def test_a_storm_of_failures_yields_one_alert_and_one_recovery(
    start_worker, fake_slack, scratch_dir
):
    channel = make_channel("webhook", kind="slack", target=fake_slack.webhook_url(), cooldown=900)
    task = make_scheduled_task(
        "flapping-import",
        "tests.sample_tasks.flaky",
        kwargs={"counter_file": str(scratch_dir / "calls"), "failures": 5},
        max_retries=0,
    )
    task.notification_channels.set([channel])
    start_worker(queues=["celery", QUEUE], **worker_env(fake_slack))

    for _ in range(6):  # five final failures, then a success
        enqueue(task)
    runs = wait_until(lambda: runs_of(task.pk, 6), timeout=60)
    assert [r.status for r in runs] == ["failed"] * 5 + ["succeeded"]
    wait_until(lambda: finished_deliveries(2), timeout=60)
    time.sleep(0.5)  # room for a wrongly sent extra alert to arrive before counting

    headers = [r.json["blocks"][0]["text"]["text"] for r in fake_slack.delivered()]
    assert headers == [
        ":red_circle: FAILED: flapping-import (attempt 1/1)",
        ":large_green_circle: RECOVERED: flapping-import (attempt 1/1)",
    ]
    log = NotificationDelivery.objects.order_by("id")
    assert [(d.event, d.status) for d in log] == [
        ("failure", "sent"),
        *[("failure", "suppressed")] * 4,
        ("recovery", "sent"),
    ]


def test_a_dead_slack_leaves_the_tasks_retries_and_outcome_unchanged(start_worker, settings):
    port = free_port()
    dead = f"http://127.0.0.1:{port}/services/T0/B0/s3cr3tW3bh00kT0k3n"
    # A listed loopback port where nothing listens (listed here and in the workers).
    allowed = {"ORCHESTRATOR_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{port}"}
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "WEBHOOK_ALLOWED_HOSTS": [
            *settings.ORCHESTRATOR["WEBHOOK_ALLOWED_HOSTS"],
            f"127.0.0.1:{port}",
        ],
    }
    channel = make_channel(
        "dead", kind="slack", target=dead, events=["retry", "failure"], cooldown=0
    )
    task = make_scheduled_task(
        "doomed",
        "tests.sample_tasks.always_fails",
        max_retries=2,
        retry_backoff="fixed",
        retry_delay=1,
    )
    task.notification_channels.set([channel])
    # Runs and deliveries on separate workers, as in production: alerts never take a run's slot.
    start_worker(queues=["celery"], **worker_env(**allowed))
    notifier = start_worker(queues=[QUEUE], **worker_env(**allowed))

    enqueue(task)
    runs = wait_until(lambda: runs_of(task.pk, 3), timeout=60)

    assert [(r.attempt, r.status, r.error_type) for r in runs] == [
        (1, "retried", "RuntimeError"),
        (2, "retried", "RuntimeError"),
        (3, "failed", "RuntimeError"),
    ]
    for earlier, later in itertools.pairwise(runs):
        # Each retry ran on time (a dead Slack with the default policy would cost up to 60 s).
        assert (later.started_at - earlier.next_retry_at).total_seconds() < 3
    deliveries = wait_until(lambda: finished_deliveries(3), timeout=60)
    assert [(d.event, d.status, d.attempts) for d in deliveries] == [
        ("retry", "failed", 4),
        ("retry", "failed", 4),
        ("failure", "failed", 4),
    ]
    assert all(d.error.startswith("Slack unreachable") for d in deliveries)
    channel.refresh_from_db()
    assert channel.last_error == ""  # unreachable is transient: the channel is not blamed
    log = notifier.log()
    assert "s3cr3tW3bh00kT0k3n" not in log
    assert "s3cr3tW3bh00kT0k3n" not in "".join(d.error for d in deliveries)


def test_the_built_in_failure_report_runs_on_a_worker_and_emails_the_failed_tasks(
    start_worker, smtp_server
):
    failing = make_scheduled_task("payroll", "tests.sample_tasks.always_fails", max_retries=0)
    fine = make_scheduled_task("heartbeat", "tests.sample_tasks.noop")
    TaskRun.objects.create(
        scheduled_task=failing, status="failed", error_type="RuntimeError", error_message="boom"
    )
    TaskRun.objects.create(scheduled_task=fine, status="succeeded")
    report = make_scheduled_task(
        "daily-failure-report",
        "orchestrator.builtin_tasks.failure_report",
        kwargs={"since": "1h", "to": ["ops@example.com"]},
        max_retries=0,
    )
    start_worker(queues=["celery", QUEUE], **worker_env(smtp=smtp_server))

    enqueue(report)
    (run,) = wait_until(lambda: runs_of(report.pk, 1), timeout=60)

    assert run.status == "succeeded", run.error_message
    assert run.result["sent"] == ["ops@example.com"]
    (email,) = smtp_server.messages
    assert email.message["Subject"] == "[orchestrator] REPORT: 1 failing task in the last 1h"
    text = email.part("text/plain")
    assert "payroll: 1 of 1 runs failed (100%)" in text
    assert "RuntimeError: boom" in text
    assert "heartbeat" not in text
    assert "<table" in email.part("text/html")
