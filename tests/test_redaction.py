"""Secrets never reach a run's stored error, traceback or result, nor the alerts about it."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import redaction
from orchestrator.dispatcher import Attempt, run_task
from orchestrator.models import NotificationDelivery, TaskRun
from orchestrator.notifications import delivery as service
from orchestrator.notifications.delivery import alert_from_run
from orchestrator.notifications.redact import MASK
from orchestrator.redaction import redact_run_result, redact_run_text
from tests.support.fake_slack import FakeSlack
from tests.utils import make_channel, make_run, make_scheduled_task

pytestmark = pytest.mark.django_db

HOOK_PATH = "/hooks/custom-h00k-s3cret-value"  # no /services/: known only as a channel target
BOT_TOKEN = "xoxb-1111-2222-b0tt0k3nvalue"
STRANGER_TOKEN = "xoxp-9999-8888-s7rang3rt0ken"
SLACK_HOOK = "https://hooks.slack.com/services/T9/B9/an0th3rw3bh00k"
DB_URL = "postgres://billing:db-pa55w0rd-77@db.internal:5432/billing"
KWARG_TOKEN = "kw-t0k3n-value-42"
KWARG_PASSWORD = "kw-pa55-value-43"


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    redaction.forget_known_secrets()


@pytest.fixture
def secrets(fake_slack: FakeSlack, settings: Any) -> list[str]:
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": fake_slack.api_url,
    }
    fake_slack.token = BOT_TOKEN
    return [
        fake_slack.webhook_url(HOOK_PATH),
        HOOK_PATH,
        BOT_TOKEN,
        STRANGER_TOKEN,
        "an0th3rw3bh00k",
        "db-pa55w0rd-77",
        KWARG_TOKEN,
        KWARG_PASSWORD,
    ]


def leaking_text(fake_slack: FakeSlack) -> str:
    return (
        f"posting to {fake_slack.webhook_url(HOOK_PATH)} failed; bot {BOT_TOKEN}, "
        f"someone's {STRANGER_TOKEN}, {SLACK_HOOK}, database {DB_URL}"
    )


def assert_clean(text: Any, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in str(text), f"{secret!r} leaked into {where}"


def test_a_failing_run_stores_and_alerts_no_secret(
    fake_slack: FakeSlack,
    secrets: list[str],
    mailoutbox: list[Any],
    deliver_now: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    webhook = make_channel("webhook", kind="slack", target=fake_slack.webhook_url(HOOK_PATH))
    bot = make_channel("bot", kind="slack", target="#ops")
    mail = make_channel("mail", kind="email", target="oncall@example.com")
    task = make_scheduled_task(
        "billing",
        "tests.sample_tasks.leaks_secrets",
        kwargs={
            "message": leaking_text(fake_slack),
            "api_token": KWARG_TOKEN,
            "password": KWARG_PASSWORD,
        },
        max_retries=0,
    )
    task.notification_channels.set([webhook, bot, mail])
    with django_capture_on_commit_callbacks(execute=True):
        run = run_task(Attempt(task.pk)).run
    assert run is not None
    run.refresh_from_db()
    assert run.status == "failed"
    assert MASK in run.error_message
    assert "db.internal:5432" in run.error_message  # only the credentials are masked
    assert "RuntimeError" in run.traceback
    assert_clean(run.error_message, secrets, "error_message")
    assert_clean(run.traceback, secrets, "traceback")

    statuses = {d.channel.name: d.status for d in NotificationDelivery.objects.all()}
    assert statuses == {"webhook": "sent", "bot": "sent", "mail": "sent"}
    slack_bodies = [r.body.decode() for r in fake_slack.received()]
    assert len(slack_bodies) == 2
    for body in slack_bodies:
        assert "leaks_secrets" in body or "billing" in body
        assert_clean(body, secrets, "a Slack alert")
    (email,) = mailoutbox
    assert "billing" in email.subject
    assert_clean(str(email.message()), secrets, "the email alert")


def test_a_result_is_stored_without_secrets(fake_slack: FakeSlack, secrets: list[str]) -> None:
    make_channel("webhook", kind="slack", target=fake_slack.webhook_url(HOOK_PATH))
    task = make_scheduled_task(
        "echo",
        "tests.sample_tasks.echo",
        kwargs={
            "summary": leaking_text(fake_slack),
            "nested": {"api_key": "nested-k3y-value", "urls": [DB_URL]},
            "api_token": KWARG_TOKEN,
        },
    )
    run = run_task(Attempt(task.pk)).run
    assert run is not None
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert run.result["nested"]["api_key"] == MASK
    assert run.result["api_token"] == MASK
    assert run.result["nested"]["urls"] == [f"postgres://{MASK}@db.internal:5432/billing"]
    assert_clean(run.result, [*secrets, "nested-k3y-value"], "the result")


def test_kwarg_values_are_masked_wherever_the_text_quotes_them() -> None:
    text = f"login failed for token {KWARG_TOKEN} and {KWARG_PASSWORD}; user alice"
    kwargs = {"user": "alice", "auth": {"api_token": KWARG_TOKEN}, "password": KWARG_PASSWORD}
    assert redact_run_text(text, kwargs) == f"login failed for token {MASK} and {MASK}; user alice"
    # Odd kwargs never raise.
    assert redact_run_text("text", ["not", "a", "dict"]) == "text"
    assert redact_run_text("", kwargs) == ""


def test_credentials_in_any_url_are_masked() -> None:
    text = "amqp://guest:guest@rabbit//, https://ghp_tok3n@github.com/x and https://example.com/@me"
    assert redact_run_text(text) == (
        f"amqp://{MASK}@rabbit//, https://{MASK}@github.com/x and https://example.com/@me"
    )


def test_channel_secrets_are_read_once_then_cached(
    fake_slack: FakeSlack, django_assert_num_queries: Any
) -> None:
    make_channel("webhook", kind="slack", target=fake_slack.webhook_url(HOOK_PATH))
    redaction.forget_known_secrets()
    text = f"error at {fake_slack.webhook_url(HOOK_PATH)}"
    with django_assert_num_queries(1):
        assert HOOK_PATH not in redact_run_text(text)
        assert HOOK_PATH not in redact_run_text(text)
        assert redact_run_result({"n": 1, "ok": True}) == {"n": 1, "ok": True}
    with django_assert_num_queries(0):
        assert redact_run_result(3) == 3
        assert redact_run_text("") == ""


def test_a_saved_channel_is_known_at_once_and_a_stale_cache_is_read_again(
    fake_slack: FakeSlack,
) -> None:
    assert redaction.known_secrets() == ("",)
    url = fake_slack.webhook_url(HOOK_PATH)
    make_channel("webhook", kind="slack", target=url)  # post_save forgets the cache
    assert url in redaction.known_secrets()
    later = redaction.KNOWN_SECRETS_SECONDS + 1e9
    assert url in redaction.known_secrets(clock=lambda: later)


def test_a_database_error_masks_with_the_secrets_read_before_and_reads_again_next_time(
    fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from django.db import OperationalError

    url = fake_slack.webhook_url(HOOK_PATH)
    make_channel("webhook", kind="slack", target=url)
    assert url in redaction.known_secrets()
    later = redaction.KNOWN_SECRETS_SECONDS + 1e9

    def unreachable() -> tuple[str, ...]:
        raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(redaction, "channel_secrets", unreachable)
    # The run's outcome is still written (by code that reconnects): nothing raises here.
    assert url in redaction.known_secrets(clock=lambda: later)
    assert "Could not read the notification channels' secrets" in caplog.text
    monkeypatch.undo()
    assert url in redaction.known_secrets(clock=lambda: later)


def test_disabled_channels_are_not_read(fake_slack: FakeSlack) -> None:
    make_channel("webhook", kind="slack", target=fake_slack.webhook_url(HOOK_PATH), enabled=False)
    assert redaction.known_secrets() == ("",)


def test_an_alert_about_a_row_stored_before_redaction_is_redacted(fake_slack: FakeSlack) -> None:
    url = fake_slack.webhook_url(HOOK_PATH)
    make_channel("webhook", kind="slack", target=url)
    task = make_scheduled_task("legacy", "tests.sample_tasks.echo", kwargs={"token": KWARG_TOKEN})
    run = make_run(
        task,
        status=TaskRun.Status.FAILED,
        error_type="RuntimeError",
        error_message=f"{url} {KWARG_TOKEN} {SLACK_HOOK}",
        note=f"paused: {STRANGER_TOKEN}",
    )
    alert = alert_from_run("failure", run)
    assert_clean(alert.error_message + alert.note, [url, KWARG_TOKEN, "an0th3rw3bh00k"], "alert")
    assert STRANGER_TOKEN not in alert.note
    assert service.alert_from_run is alert_from_run


def test_the_failure_report_quotes_errors_redacted() -> None:
    import datetime as dt

    from django.utils import timezone

    from orchestrator.notifications.report import build_report

    task = make_scheduled_task("legacy", "tests.sample_tasks.echo", kwargs={"token": KWARG_TOKEN})
    make_run(
        task,
        status=TaskRun.Status.FAILED,
        error_type="RuntimeError",
        error_message=f"{KWARG_TOKEN} {SLACK_HOOK} {DB_URL}",
    )
    later = timezone.now() + dt.timedelta(minutes=1)
    (row,) = build_report("1d", now=later).rows
    assert_clean(row.last_error, [KWARG_TOKEN, "an0th3rw3bh00k", "db-pa55w0rd-77"], "the report")
