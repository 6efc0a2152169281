"""A full failing run through a real worker at DEBUG: no secret in any log line.

The worker runs a task whose kwargs hold a secret, fails it, retries it, fails it for good, and
alerts a Slack webhook (whose URL is the credential), a Slack channel through the bot token, and
an SMTP server that needs a password. Its whole log, at DEBUG with the Slack SDK's own logger
turned up, and this process's log are then searched for each secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import tests.celery_app  # noqa: F401  (makes the test project's app current for enqueue())
from orchestrator.dispatcher import enqueue
from orchestrator.models import NotificationChannel, NotificationDelivery, TaskRun
from tests.integration.conftest import wait_until
from tests.support.fake_slack import WEBHOOK_PATH, FakeSlack, Reply
from tests.support.smtp import SMTPServer
from tests.utils import make_channel, make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "notifications"
KWARGS_SECRET = "kw-s3cr3t-9b2e71"
SMTP_USER = "alerts@example.com"
SMTP_PASSWORD = "smtp-pa55w0rd-5c1d8a"
BOT_TOKEN = "xoxb-4242-s3cr3tb0tt0k3n-int"


@pytest.fixture
def fake_slack(settings: Any) -> Iterator[FakeSlack]:
    server = FakeSlack(token=BOT_TOKEN)
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "WEBHOOK_ALLOWED_HOSTS": [
            *settings.ORCHESTRATOR["WEBHOOK_ALLOWED_HOSTS"],
            server.allowed_host,
        ],
    }
    yield server
    server.close()


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer(credentials=(SMTP_USER, SMTP_PASSWORD))
    yield server
    server.close()


def worker_env(fake_slack: FakeSlack, smtp: SMTPServer) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "tests.support.debug_worker_settings",
        "ORCHESTRATOR_NOTIFICATION_QUEUE": QUEUE,
        "ORCHESTRATOR_NOTIFICATION_RETRY": json.dumps(
            {"max_attempts": 3, "max_seconds": 10, "base_delay": 0.1, "max_delay": 0.5}
        ),
        **fake_slack.worker_env(),
        "ORCHESTRATOR_SLACK_BOT_TOKEN": fake_slack.token,
        **smtp.env(),
    }


def secrets(fake_slack: FakeSlack) -> dict[str, str]:
    return {
        "webhook URL": fake_slack.webhook_url(),
        "webhook path": WEBHOOK_PATH,
        "webhook token": WEBHOOK_PATH.rsplit("/", 1)[1],
        "bot token": BOT_TOKEN,
        "bot token body": BOT_TOKEN.split("-", 1)[1],
        "SMTP password": SMTP_PASSWORD,
        "kwargs value": KWARGS_SECRET,
    }


def finished_failure_alerts() -> list[NotificationDelivery] | None:
    done = list(NotificationDelivery.objects.filter(event="failure", status__in=["sent", "failed"]))
    return done if len(done) >= 3 else None


def test_a_failing_run_logs_no_secret_at_debug(
    start_worker, fake_slack: FakeSlack, smtp_server: SMTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    webhook = make_channel(
        "webhook", kind="slack", target=fake_slack.webhook_url(), events=["retry", "failure"]
    )
    bot = make_channel("bot", kind="slack", target="#ops")
    mail = make_channel("mail", kind="email", target="oncall@example.com")
    # add() fails with a TypeError that does not quote the value: the secret can only leak through
    # orchestrator's own logging of the arguments.
    task = make_scheduled_task(
        "month-end",
        "tests.sample_tasks.add",
        kwargs={"a": KWARGS_SECRET, "b": 1},
        max_retries=1,
        retry_delay=0,
    )
    task.notification_channels.set([webhook, bot, mail])
    # The webhook answers 500 once: the delivery retry is logged with its target.
    fake_slack.script(WEBHOOK_PATH, Reply(500, "oops"))
    worker = start_worker(
        queues=["celery", QUEUE], loglevel="DEBUG", **worker_env(fake_slack, smtp_server)
    )

    enqueue(task)
    alerts = wait_until(finished_failure_alerts, timeout=60)

    runs = list(TaskRun.objects.filter(scheduled_task=task).order_by("attempt"))
    assert [(r.attempt, r.status) for r in runs] == [(1, "retried"), (2, "failed")]
    assert {(a.channel.name, a.status) for a in alerts} == {
        ("webhook", "sent"),
        ("bot", "sent"),
        ("mail", "sent"),
    }
    assert smtp_server.logins == [SMTP_USER]  # the password was used, so it could have leaked
    assert len(fake_slack.received(WEBHOOK_PATH)) >= 3  # the 500, the retry alert, the failure

    log = worker.log()
    # The log really is at DEBUG, the SDK's request lines included (redacted).
    assert "DEBUG celery" in log
    assert "Sending a request" in log
    assert "retrying in" in log
    for name, secret in secrets(fake_slack).items():
        assert secret not in log, f"the {name} is in the worker log"
        assert secret not in caplog.text, f"the {name} is in the test process's log"
    for channel in NotificationChannel.objects.all():
        for name, secret in secrets(fake_slack).items():
            assert secret not in channel.last_error, f"the {name} is in {channel}'s last error"
    for message in smtp_server.messages:
        assert KWARGS_SECRET not in message.raw.decode(errors="replace")
    for request in fake_slack.received():
        assert KWARGS_SECRET not in request.body.decode()
