"""Security: the allow-list holds on every path in, and secrets stay out of pages, answers and logs.

Every escape attempt is tried through the four ways a callable reaches the dispatcher: the shell
(``full_clean()``), the admin, the API, and a raw database edit that only the dispatcher's own
re-check at run time can stop. The secrets tests plant a webhook URL, a bot token and a kwargs
value, run a failing task through the real notification path in this process with every logger at
DEBUG, and look for them everywhere an operator or an attacker could read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from orchestrator import callables, dispatcher
from orchestrator.models import (
    NotificationChannel,
    NotificationDelivery,
    ScheduledTask,
    TaskDefinition,
    TaskRun,
)
from orchestrator.notifications import delivery as service
from orchestrator.notifications.delivery import alert_from_run
from orchestrator.notifications.events import connection_test_alert
from orchestrator.notifications.redact import RedactingFilter
from orchestrator.notifications.slack import SlackChannel
from tests.support.fake_slack import API_PATH, WEBHOOK_PATH, FakeSlack, Reply
from tests.utils import make_channel, make_definition, make_scheduled_task

pytestmark = pytest.mark.django_db

ALLOWED = ("tests.sample_tasks", "orchestrator.builtin_tasks")
KWARGS_SECRET = "kw-s3cr3t-4f1c9e"
WEBHOOK_SECRET = "s3cr3tW3bh00kT0k3n"  # the last part of tests.support.fake_slack.WEBHOOK_PATH


# --- the allow-list ------------------------------------------------------------------------------

ESCAPES = [
    pytest.param("os.system", id="os-system"),
    pytest.param("builtins.eval", id="builtins-eval"),
    pytest.param("builtins.exec", id="builtins-exec"),
    pytest.param("subprocess.run", id="subprocess"),
    pytest.param("tests.sample_tasks..noop", id="empty-part"),
    pytest.param(".noop", id="relative"),
    pytest.param("..sample_tasks.noop", id="relative-parent"),
    pytest.param("tests.sample_tasks.", id="trailing-dot"),
    pytest.param("tests.sample_tasks.system", id="reexported-os-system"),
    pytest.param("tests.sample_tasks.join", id="reexported-os-path-join"),
    pytest.param("tests.sample_tasks.Path", id="reexported-class"),
    pytest.param("tests.sample_tasks.os", id="module-attribute"),
    pytest.param("tests.sample_tasks.os.system", id="attribute-chain"),
    pytest.param("tests.sample_tasks.os.path.join", id="attribute-chain-2"),
    pytest.param("tests.sample_tasks.__builtins__", id="dunder-builtins"),
    pytest.param("tests.sample_tasks.noop.__globals__", id="dunder-globals"),
    pytest.param("tests.sample_tasks_evil.noop", id="prefix-without-dot"),
    pytest.param("tests.sample_tasksX.noop", id="prefix-glued"),
    pytest.param("tests.sample_tasks.noop\n", id="trailing-newline"),
    pytest.param(" tests.sample_tasks.noop", id="leading-space"),
    pytest.param("tests.sample_tasks.n\u043eop", id="homoglyph"),
    pytest.param("tests/sample_tasks.noop", id="slash"),
    pytest.param("tests.sample_tasks:noop", id="colon"),
]


@pytest.mark.parametrize("path", ESCAPES)
def test_the_allow_list_refuses_escapes_in_the_shell(path: str) -> None:
    definition = TaskDefinition(name="escape", import_path=path)
    with pytest.raises(ValidationError) as raised:
        definition.full_clean()
    assert "import_path" in raised.value.message_dict
    with pytest.raises(callables.CallableError):
        callables.resolve(path, ALLOWED)


def test_a_trailing_newline_is_refused_as_a_malformed_path() -> None:
    # A regex's $ also matches before a final newline: the path must be refused for its shape,
    # not later for naming a missing attribute.
    with pytest.raises(callables.CallableError, match="not a dotted import path"):
        callables.check_allowed("tests.sample_tasks.noop\n", ALLOWED)


@pytest.mark.parametrize("path", ESCAPES)
def test_the_allow_list_refuses_escapes_in_the_admin_and_the_api(
    path: str, admin_web: Client, api: APIClient
) -> None:
    form = admin_web.post(
        reverse("admin:orchestrator_taskdefinition_add"),
        {"name": "escape", "import_path": path, "category": "", "enabled": "on"},
    )
    answer = api.post(
        reverse("orchestrator:api-task-definition-list"),
        {"name": "escape-api", "import_path": path},
        format="json",
    )
    if path.strip() != path:
        # Forms and serializers trim surrounding whitespace: what is saved is the plain path.
        assert set(TaskDefinition.objects.values_list("import_path", flat=True)) == {path.strip()}
        return
    assert form.status_code == 200
    assert "import_path" in form.context["adminform"].form.errors
    assert answer.status_code == 400
    assert "import_path" in answer.json()
    assert not TaskDefinition.objects.exists()


@pytest.mark.parametrize("path", ESCAPES)
def test_a_raw_database_edit_to_an_escape_never_runs(path: str, tmp_path: Path) -> None:
    # os.system would create this file; join, eval and the others would return without trace,
    # so the run's status is what proves they were not called.
    proof = tmp_path / "ran"
    task = make_scheduled_task("victim", "tests.sample_tasks.noop", max_retries=3)
    TaskDefinition.objects.filter(pk=task.task_definition_id).update(import_path=path)
    ScheduledTask.objects.filter(pk=task.pk).update(kwargs={"command": f"touch {proof}"})

    outcome = dispatcher.run_task(dispatcher.Attempt(task.pk))

    assert outcome.action is dispatcher.Action.DONE  # refused for good, never retried
    assert outcome.run is not None
    assert outcome.run.status == TaskRun.Status.FAILED
    assert outcome.run.error_message.startswith("Refused to run")
    assert not proof.exists()
    assert not TaskRun.objects.filter(status=TaskRun.Status.RUNNING).exists()


def test_narrowing_the_allow_list_stops_saved_definitions_at_run_time(settings) -> None:
    task = make_scheduled_task("was-allowed", "tests.sample_tasks.noop")
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "ALLOWED_TASK_MODULES": ["billing"]}
    run = dispatcher.run_task(dispatcher.Attempt(task.pk)).run
    assert run is not None and run.status == TaskRun.Status.FAILED
    assert "not allowed" in run.error_message


def test_a_scheduled_task_cannot_point_at_a_definition_edited_to_an_escape(api: APIClient) -> None:
    definition = make_definition("noop", "tests.sample_tasks.noop")
    TaskDefinition.objects.filter(pk=definition.pk).update(import_path="os.system")
    answer = api.post(
        reverse("orchestrator:api-scheduled-task-list"),
        {"name": "t", "task_definition": definition.pk, "cron": "* * * * *", "kwargs": {}},
        format="json",
    )
    assert answer.status_code == 400
    assert "cannot run" in answer.json()["task_definition"][0]


# --- secrets -------------------------------------------------------------------------------------


def secrets_of(fake_slack: FakeSlack) -> list[str]:
    return [WEBHOOK_SECRET, fake_slack.webhook_url(), fake_slack.token, KWARGS_SECRET]


def assert_no_secret(text: str, fake_slack: FakeSlack, where: str) -> None:
    for secret in secrets_of(fake_slack):
        assert secret not in text, f"{secret!r} leaked into {where}"


@pytest.fixture
def everything_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Root and the Slack SDK's own logger at DEBUG, as an operator chasing a bug would set them."""
    sdk = logging.getLogger("orchestrator.notifications.slack_sdk")
    previous = sdk.level
    sdk.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield caplog
    sdk.setLevel(previous)


def test_a_failing_run_with_every_channel_leaks_no_secret(
    slack_settings: FakeSlack,
    everything_at_debug: pytest.LogCaptureFixture,
    admin_web: Client,
    api: APIClient,
    mailoutbox: list,
) -> None:
    webhook = make_channel("webhook", kind="slack", target=slack_settings.webhook_url())
    bot = make_channel("bot", kind="slack", target="#ops")
    mail = make_channel("mail", kind="email", target="oncall@example.com")
    # add() fails with a TypeError whose text does not quote the value, as a careful task's would.
    task = make_scheduled_task(
        "billing", "tests.sample_tasks.add", kwargs={"a": KWARGS_SECRET, "b": 1}, max_retries=1
    )
    task.notification_channels.set([webhook, bot, mail])
    slack_settings.script(WEBHOOK_PATH, Reply(500, "oops"))  # one retry of the webhook, logged

    for attempt in (1, 2):  # a retry, then the final failure
        run = dispatcher.run_task(dispatcher.Attempt(task.pk, number=attempt)).run
        assert run is not None
        for delivery in NotificationDelivery.objects.filter(task_run=run, status="pending"):
            service.deliver(
                delivery.pk, alert_from_run(delivery.event, run).to_dict(), sleep=lambda s: None
            )

    deliveries = NotificationDelivery.objects.all()
    assert {(d.channel.name, d.status) for d in deliveries if d.event == "failure"} == {
        ("webhook", "sent"),
        ("bot", "sent"),
        ("mail", "sent"),
    }
    assert any("Sending a request" in r.getMessage() for r in everything_at_debug.records)
    assert_no_secret(everything_at_debug.text, slack_settings, "the logs")
    for request in slack_settings.received():
        where = f"the Slack message to {request.path}"
        assert_no_secret(request.body.decode(), slack_settings, where)
    for email in mailoutbox:
        assert_no_secret(str(email.message()), slack_settings, "an alert email")
    for d in deliveries:
        assert_no_secret(d.error, slack_settings, "a delivery's error")

    pages = {
        "task list": admin_web.get(reverse("admin:orchestrator_scheduledtask_changelist")),
        "run list": admin_web.get(reverse("admin:orchestrator_taskrun_changelist")),
        "channel list": admin_web.get(reverse("admin:orchestrator_notificationchannel_changelist")),
        "channel form": admin_web.get(
            reverse("admin:orchestrator_notificationchannel_change", args=[webhook.pk])
        ),
        "delivery log": admin_web.get(
            reverse("admin:orchestrator_notificationdelivery_changelist")
        ),
        "dashboard": admin_web.get(reverse("orchestrator:dashboard")),
        "api channels": api.get(reverse("orchestrator:api-channel-list")),
        "api channel": api.get(reverse("orchestrator:api-channel-detail", args=[webhook.pk])),
        "api runs": api.get(reverse("orchestrator:api-run-list")),
    }
    for name, page in pages.items():
        assert page.status_code == 200, name
        assert_no_secret(page.content.decode(), slack_settings, name)


def test_a_stored_error_quoting_the_webhook_never_reaches_a_page(
    fake_slack: FakeSlack, admin_web: Client, api: APIClient
) -> None:
    # Stored errors are redacted when written; the pages must hold even if one was not (an older
    # release, a third-party channel class that quoted its own URL).
    url = fake_slack.webhook_url()
    channel = make_channel("webhook", kind="slack", target=url)
    NotificationChannel.objects.filter(pk=channel.pk).update(last_error=f"POST {url} failed")
    NotificationDelivery.objects.create(
        channel=channel, event="failure", status="failed", error=f"POST {url} failed"
    )
    delivery = NotificationDelivery.objects.get()
    pages = {
        "channel list": admin_web.get(reverse("admin:orchestrator_notificationchannel_changelist")),
        "channel form": admin_web.get(
            reverse("admin:orchestrator_notificationchannel_change", args=[channel.pk])
        ),
        "delivery log": admin_web.get(
            reverse("admin:orchestrator_notificationdelivery_changelist")
        ),
        "delivery": admin_web.get(
            reverse("admin:orchestrator_notificationdelivery_change", args=[delivery.pk])
        ),
        "api channel": api.get(reverse("orchestrator:api-channel-detail", args=[channel.pk])),
    }
    for name, page in pages.items():
        assert page.status_code == 200, name
        assert WEBHOOK_SECRET not in page.content.decode(), name
    assert "failed" in pages["channel list"].content.decode()


@pytest.mark.parametrize(
    ("target", "reply", "path"),
    [
        pytest.param("webhook", Reply(404, "no_service"), WEBHOOK_PATH, id="webhook-404"),
        pytest.param(
            "bot", Reply(200, {"ok": False, "error": "invalid_auth"}), API_PATH, id="bot-auth"
        ),
        pytest.param("dead", None, None, id="unreachable"),
    ],
)
def test_the_send_test_action_reports_errors_without_the_secret(
    slack_settings: FakeSlack,
    everything_at_debug: pytest.LogCaptureFixture,
    admin_web: Client,
    target: str,
    reply: Reply | None,
    path: str | None,
    deliver_now: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    if target == "webhook":
        value = slack_settings.webhook_url()
    elif target == "bot":
        value = "#ops"
    else:
        value = "http://127.0.0.1:9" + WEBHOOK_PATH  # the discard port: connection refused
    channel = make_channel("c", kind="slack", target=value)
    if reply is not None and path is not None:
        slack_settings.script(path, reply)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_web.post(
            reverse("admin:orchestrator_notificationchannel_changelist"),
            {"action": "send_test_notification", "_selected_action": [channel.pk]},
            follow=True,
        )
    (message,) = [str(m) for m in response.context["messages"]]
    assert "test notification queued" in message
    channel.refresh_from_db()
    delivery = NotificationDelivery.objects.get(channel=channel, event="test")
    assert delivery.status == "failed"
    log = admin_web.get(reverse("admin:orchestrator_notificationdelivery_changelist"))
    for text, where in (
        (message, "the admin message"),
        (channel.last_error, "last_error"),
        (delivery.error, "the delivery log"),
        (log.content.decode(), "the delivery log page"),
        (response.content.decode(), "the page"),
        (everything_at_debug.text, "the logs"),
    ):
        assert_no_secret(text, slack_settings, where)


def test_kwargs_never_reach_list_pages_searches_or_alerts(admin_web: Client, api: APIClient):
    task = make_scheduled_task("report", "tests.sample_tasks.echo", kwargs={"token": KWARGS_SECRET})
    run = dispatcher.run_task(dispatcher.Attempt(task.pk)).run
    assert run is not None
    for url in (
        reverse("admin:orchestrator_scheduledtask_changelist"),
        reverse("orchestrator:dashboard"),
    ):
        page = admin_web.get(url)
        assert page.status_code == 200
        assert KWARGS_SECRET not in page.content.decode()
    search = admin_web.get(
        reverse("admin:orchestrator_scheduledtask_changelist"), {"q": KWARGS_SECRET}
    )
    assert list(search.context["cl"].result_list) == []
    assert KWARGS_SECRET not in str(alert_from_run("failure", run).to_dict())


def test_error_payloads_of_the_api_carry_no_exception_text(
    api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = make_scheduled_task("t")

    def broker_down(self: ScheduledTask, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError(f"redis://:{KWARGS_SECRET}@broker:6379/0 unreachable")

    monkeypatch.setattr(ScheduledTask, "run_now", broker_down)
    answer = api.post(reverse("orchestrator:api-scheduled-task-run", args=[task.pk]))
    assert answer.status_code == 503
    assert KWARGS_SECRET not in answer.content.decode()


def test_a_webhook_hosted_elsewhere_is_masked_in_the_sdks_debug_lines(
    fake_slack: FakeSlack, everything_at_debug: pytest.LogCaptureFixture
) -> None:
    # Slack-compatible servers (Mattermost, a proxy) have no /services/ path to recognise.
    url = fake_slack.webhook_url("/hooks/custom-h00k-s3cret-value")
    SlackChannel(url).notify(connection_test_alert())
    assert any("Sending a request" in r.getMessage() for r in everything_at_debug.records)
    assert "custom-h00k-s3cret-value" not in everything_at_debug.text
    # Web API method names stay readable for whoever debugs a delivery.
    assert mask_sdk_line(f"url: {fake_slack.api_url}chat.postMessage").endswith(
        "/api/chat.postMessage"
    )


def mask_sdk_line(message: str) -> str:
    record = logging.LogRecord("sdk", logging.DEBUG, __file__, 1, message, None, None)
    RedactingFilter().filter(record)
    return record.getMessage()


XSS = '<script>alert("x")</script>'


def test_markup_in_names_and_errors_is_escaped_on_every_page_and_in_slack(
    admin_web: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    definition = make_definition(f"def {XSS}", "tests.sample_tasks.noop", category=f"cat {XSS}")
    task = make_scheduled_task(
        f"task {XSS} <!channel>", definition=definition, description=XSS, max_retries=0
    )
    channel = make_channel(f"chan {XSS}", kind="slack", target="#ops")
    task.notification_channels.set([channel])
    error_class = type(XSS, (Exception,), {})

    def explode() -> None:
        raise error_class(f"{XSS} <!everyone> <@U123>")

    monkeypatch.setattr(TaskDefinition, "resolve", lambda self: explode)
    run = dispatcher.run_task(dispatcher.Attempt(task.pk, trigger=TaskRun.Trigger.MANUAL)).run
    assert run is not None and run.status == TaskRun.Status.FAILED

    for url in (
        reverse("admin:orchestrator_scheduledtask_changelist"),
        reverse("admin:orchestrator_scheduledtask_change", args=[task.pk]),
        reverse("admin:orchestrator_taskdefinition_changelist"),
        reverse("admin:orchestrator_taskrun_changelist"),
        reverse("admin:orchestrator_taskrun_change", args=[run.pk]),
        reverse("admin:orchestrator_notificationchannel_changelist"),
        reverse("orchestrator:dashboard"),
        reverse("orchestrator:task-detail", args=[task.pk]),
    ):
        page = admin_web.get(url)
        assert page.status_code == 200, url
        assert XSS not in page.content.decode(), url

    # Slack: no mention can be forged, and no markup survives outside the plain-text header.
    payload = SlackChannel("#ops").payload(alert_from_run("failure", run))
    for block in payload["blocks"][1:]:
        texts = [block.get("text", {}).get("text", "")]
        texts += [item.get("text", "") for item in block.get("fields", [])]
        for text in texts:
            assert "<!" not in text and "<@" not in text and "<script>" not in text
    assert "<!" not in payload["text"] and "<script>" not in payload["text"]
