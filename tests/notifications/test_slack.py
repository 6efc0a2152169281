import datetime as dt
import logging

import pytest
from django.core.exceptions import ValidationError

from orchestrator.notifications.base import NotificationError
from orchestrator.notifications.events import Alert, Report, ReportRow
from orchestrator.notifications.slack import SlackChannel, api_error, webhook_error
from tests.notifications.conftest import RUN_URL, T0, failure_alert
from tests.support.fake_slack import API_PATH, WEBHOOK_PATH, Reply

WEBHOOK = "https://hooks.slack.com/services/T000/B000/abcdefghijklmnop"

FAILURE_BLOCKS = [
    {
        "type": "header",
        "text": {
            "type": "plain_text",
            "text": ":red_circle: FAILED: nightly-billing (attempt 4/4)",
            "emoji": True,
        },
    },
    {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": "nightly-billing failed on its last attempt (4 of 4); it will not be "
            "retried until its next scheduled run.",
        },
    },
    {
        "type": "section",
        "fields": [
            {"type": "mrkdwn", "text": "*Task*\nnightly-billing"},
            {"type": "mrkdwn", "text": "*Definition*\nSend invoices"},
            {"type": "mrkdwn", "text": "*Attempt*\n4 of 4"},
            {"type": "mrkdwn", "text": "*Duration*\n12.3 s"},
            {"type": "mrkdwn", "text": "*Queue*\nbilling"},
            {"type": "mrkdwn", "text": "*Started*\n2026-03-01 12:00:00 UTC"},
        ],
    },
    {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "*ConnectionError*\n```db &lt;down&gt; &amp; 'x'```"},
    },
    {
        "type": "context",
        "elements": [
            {
                "type": "mrkdwn",
                "text": "3 similar alerts suppressed since the previous one (cooldown).",
            }
        ],
    },
    {
        "type": "actions",
        "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "View run"}, "url": RUN_URL}
        ],
    },
]


def test_webhook_payload_of_a_final_failure_is_exact():
    assert SlackChannel(WEBHOOK).payload(failure_alert()) == {
        "text": "FAILED: nightly-billing (attempt 4/4)\n"
        "nightly-billing failed on its last attempt (4 of 4); it will not be retried until its "
        "next scheduled run.\n"
        "ConnectionError: db &lt;down&gt; &amp; `x`\n"
        "3 similar alerts suppressed since the previous one (cooldown).\n"
        f"Run: {RUN_URL}",
        "blocks": FAILURE_BLOCKS,
    }


def test_bot_payload_names_the_channel():
    payload = SlackChannel("#ops-alerts").payload(failure_alert())
    assert payload["channel"] == "#ops-alerts"
    assert payload["blocks"] == FAILURE_BLOCKS


def test_retry_payload_says_when_the_next_attempt_is_due():
    alert = failure_alert(
        event="retry",
        attempt=1,
        error_type="",
        error_message="",
        suppressed_count=0,
        run_url="",
        next_retry_at=T0 + dt.timedelta(minutes=5),
        duration=0.25,
        queue="",
    )
    blocks = SlackChannel(WEBHOOK).payload(alert)["blocks"]
    assert blocks == [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": ":large_yellow_circle: RETRYING: nightly-billing (attempt 1/4)",
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": "Attempt 1 of 4 of nightly-billing failed; the next attempt is due at "
                "2026-03-01 12:05:00 UTC.",
            },
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": "*Task*\nnightly-billing"},
                {"type": "mrkdwn", "text": "*Definition*\nSend invoices"},
                {"type": "mrkdwn", "text": "*Attempt*\n1 of 4"},
                {"type": "mrkdwn", "text": "*Duration*\n250 ms"},
                {"type": "mrkdwn", "text": "*Queue*\ndefault"},
                {"type": "mrkdwn", "text": "*Started*\n2026-03-01 12:00:00 UTC"},
                {"type": "mrkdwn", "text": "*Next retry*\n2026-03-01 12:05:00 UTC"},
            ],
        },
    ]


def test_recovery_payload():
    alert = failure_alert(
        event="recovery", attempt=1, error_type="", error_message="", suppressed_count=0
    )
    payload = SlackChannel(WEBHOOK).payload(alert)
    assert payload["blocks"][0]["text"]["text"] == (
        ":large_green_circle: RECOVERED: nightly-billing (attempt 1/4)"
    )
    assert payload["blocks"][1]["text"]["text"] == (
        "nightly-billing succeeded again after a final failure."
    )
    assert [b["type"] for b in payload["blocks"]] == ["header", "section", "section", "actions"]


def test_markup_in_task_names_is_escaped_and_headers_stay_within_slack_limits():
    alert = failure_alert(task_name="<!channel> " + "x" * 300)
    blocks = SlackChannel(WEBHOOK).payload(alert)["blocks"]
    assert len(blocks[0]["text"]["text"]) == 150
    assert blocks[0]["text"]["text"].endswith("…")
    assert "<!channel>" not in str(blocks[1:])
    assert "&lt;!channel&gt;" in blocks[1]["text"]["text"]


def test_report_payload_is_exact():
    report = Report(
        since=T0 - dt.timedelta(days=1),
        until=T0,
        period="24h",
        rows=(
            ReportRow("billing", 10, 4, 2, "RuntimeError: boom", T0, "http://t/x/7/", 7),
            ReportRow("sync", 5, 0, 3, "ConnectionError: x", T0, "", 8),
        ),
        total_runs=15,
        total_failures=4,
    )
    assert SlackChannel(WEBHOOK).payload(report) == {
        "text": "REPORT: 2 failing tasks in the last 24h\n"
        "billing: 4 of 10 runs failed (40%), 2 retries; last error 2026-03-01 12:00:00 UTC: "
        "RuntimeError: boom\n"
        "sync: 0 of 5 runs failed (0%), 3 retries; last error 2026-03-01 12:00:00 UTC: "
        "ConnectionError: x",
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": ":bar_chart: REPORT: 2 failing tasks in the last 24h",
                    "emoji": True,
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "2026-02-28 12:00:00 UTC to 2026-03-01 12:00:00 UTC: "
                    "4 failed of 15 runs.",
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*<http://t/x/7/|billing>*\n4 of 10 runs failed (40%), 2 retries\n"
                    "Last error 2026-03-01 12:00:00 UTC: `RuntimeError: boom`",
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*sync*\n0 of 5 runs failed (0%), 3 retries\n"
                    "Last error 2026-03-01 12:00:00 UTC: `ConnectionError: x`",
                },
            },
        ],
    }


@pytest.mark.parametrize(
    ("status", "body", "headers", "permanent", "retry_after"),
    [
        (429, "rate_limited", {"Retry-After": "3"}, False, 3.0),
        (429, "", {}, False, None),
        (500, "<html>oops</html>", {}, False, None),
        (503, "", {}, False, None),
        (404, "no_service", {}, True, None),
        (400, "invalid_payload", {}, True, None),
        (403, "action_prohibited", {}, True, None),
        (410, "channel_is_archived", {}, True, None),
    ],
)
def test_webhook_answers_are_classified(status, body, headers, permanent, retry_after):
    error = webhook_error(status, body, headers)
    assert isinstance(error, NotificationError)
    assert error.permanent is permanent
    assert error.retry_after == retry_after
    assert f"HTTP {status}" in error.message
    assert "<html>" not in error.message


@pytest.mark.parametrize(("status", "body"), [(200, "ok"), (200, '{"success": true}'), (204, "")])
def test_an_accepted_webhook_post_is_no_error(status, body):
    # Slack-compatible servers accept with other bodies; retrying would post twice.
    assert webhook_error(status, body, {}) is None


@pytest.mark.parametrize(
    ("status", "error", "permanent"),
    [
        (200, "invalid_auth", True),
        (200, "channel_not_found", True),
        (200, "not_in_channel", True),
        (200, "is_archived", True),
        (200, "internal_error", False),
        (200, "fatal_error", False),
        (429, "ratelimited", False),
        (500, "", False),
        (502, "Received a response in a non-JSON format: <html>", False),
    ],
)
def test_api_errors_are_classified(status, error, permanent):
    result = api_error(status, error, {"retry-after": "2"})
    assert result.permanent is permanent
    if status == 429:
        assert result.retry_after == 2.0
    assert "<html>" not in result.message


@pytest.mark.parametrize(
    "target", [WEBHOOK, "#alerts", "alerts", "ops-team.eu", "C0123456789", "G12345678"]
)
def test_valid_targets(target):
    SlackChannel.validate_target(target)


@pytest.mark.parametrize(
    "target", ["https://", "https://hooks.slack.com", "#Bad Channel", "alerts\nBcc: x", ""]
)
def test_invalid_targets(target):
    with pytest.raises(ValidationError) as info:
        SlackChannel.validate_target(target)
    assert "target" in info.value.message_dict


def test_webhook_urls_are_masked_and_channel_names_are_not():
    assert SlackChannel.mask_target(WEBHOOK) == "https://hooks.slack.com/…mnop"
    assert SlackChannel.mask_target("#alerts") == "#alerts"


# --- against the Slack look-alike --------------------------------------------------------------


def test_webhook_send_posts_the_payload(fake_slack):
    SlackChannel(fake_slack.webhook_url()).notify(failure_alert())
    (request,) = fake_slack.delivered(WEBHOOK_PATH)
    assert request.json == SlackChannel(WEBHOOK).payload(failure_alert())


@pytest.mark.parametrize(
    ("reply", "permanent", "retry_after"),
    [
        (Reply(429, "rate_limited", {"Retry-After": "2"}), False, 2.0),
        (Reply(500, "<html>error</html>"), False, None),
        (Reply(404, "no_service"), True, None),
        (Reply(400, "invalid_payload"), True, None),
    ],
)
def test_webhook_errors_raise_one_classified_error_without_the_url(
    fake_slack, reply, permanent, retry_after
):
    fake_slack.script(WEBHOOK_PATH, reply)
    with pytest.raises(NotificationError) as info:
        SlackChannel(fake_slack.webhook_url()).notify(failure_alert())
    assert info.value.permanent is permanent
    assert info.value.retry_after == retry_after
    assert "s3cr3t" not in str(info.value)


def test_bot_posts_with_chat_post_message(slack_settings):
    SlackChannel("#ops").notify(failure_alert())
    (request,) = slack_settings.delivered(API_PATH)
    assert request.headers["authorization"] == f"Bearer {slack_settings.token}"
    body = request.body.decode()
    assert "channel=%23ops" in body or '"channel": "#ops"' in body


@pytest.mark.parametrize(
    ("reply", "permanent", "retry_after"),
    [
        (Reply(200, {"ok": False, "error": "invalid_auth"}), True, None),
        (Reply(200, {"ok": False, "error": "channel_not_found"}), True, None),
        (Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}), False, 1.0),
        (Reply(500, "<html>down</html>"), False, None),
        (Reply(503, {"ok": False, "error": "service_unavailable"}), False, None),
    ],
)
def test_bot_errors_are_classified(slack_settings, reply, permanent, retry_after):
    slack_settings.script(API_PATH, reply)
    with pytest.raises(NotificationError) as info:
        SlackChannel("#ops").notify(failure_alert())
    assert info.value.permanent is permanent
    assert info.value.retry_after == retry_after
    assert slack_settings.token not in str(info.value)


def test_bot_without_a_token_is_a_permanent_error(settings, monkeypatch):
    monkeypatch.delenv("ORCHESTRATOR_SLACK_BOT_TOKEN", raising=False)
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SLACK_BOT_TOKEN": ""}
    with pytest.raises(NotificationError) as info:
        SlackChannel("#ops").notify(failure_alert())
    assert info.value.permanent
    assert "SLACK_BOT_TOKEN" in str(info.value)


def test_an_unreachable_slack_is_a_transient_error_without_the_url(fake_slack):
    url = fake_slack.webhook_url()
    fake_slack.close()
    with pytest.raises(NotificationError) as info:
        SlackChannel(url).notify(failure_alert())
    assert not info.value.permanent
    assert "s3cr3t" not in str(info.value)
    assert "unreachable" in str(info.value)


# A real socket timing out on a server that answers late: it waits on the clock, so it runs
# with the tests of real processes.
@pytest.mark.integration
def test_a_timeout_is_transient(fake_slack, monkeypatch):
    monkeypatch.setattr("orchestrator.notifications.slack.HTTP_TIMEOUT", 0.2)
    fake_slack.script(WEBHOOK_PATH, Reply(200, "ok", delay=1.0))
    with pytest.raises(NotificationError) as info:
        SlackChannel(fake_slack.webhook_url()).notify(failure_alert())
    assert not info.value.permanent


def test_slack_sdk_debug_logging_never_shows_the_webhook_url(fake_slack, caplog):
    # Even with the SDK's logger turned up to DEBUG by an operator.
    sdk = logging.getLogger("orchestrator.notifications.slack_sdk")
    previous = sdk.level
    sdk.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG):
            SlackChannel(fake_slack.webhook_url()).notify(failure_alert())
    finally:
        sdk.setLevel(previous)
    assert any("Sending a request" in r.getMessage() for r in caplog.records)
    assert "s3cr3tW3bh00kT0k3n" not in caplog.text


def test_test_alert_payload(fake_slack):
    alert = Alert(event="test", task_name="orchestrator test notification")
    payload = SlackChannel(WEBHOOK).payload(alert)
    assert payload["blocks"] == [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": ":wave: TEST: notifications from orchestrator work",
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": "This is a test notification sent from the orchestrator admin.",
            },
        },
    ]


def test_a_failure_with_a_log_shows_its_last_lines_in_a_code_block():
    tail = "INFO billing: fetching <invoices> & `totals`\nERROR billing: gave up"
    blocks = SlackChannel(WEBHOOK).payload(failure_alert(log_tail=tail))["blocks"]
    log_blocks = [b for b in blocks if "Last lines of the log" in b.get("text", {}).get("text", "")]
    assert log_blocks == [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": "*Last lines of the log*\n```INFO billing: fetching &lt;invoices&gt; "
                "&amp; 'totals'\nERROR billing: gave up```",
            },
        }
    ]
    # The plain-text fallback (notifications, screen readers) stays short.
    assert "gave up" not in SlackChannel(WEBHOOK).payload(failure_alert(log_tail=tail))["text"]


def test_a_log_tail_that_escaping_lengthens_still_fits_its_section():
    blocks = SlackChannel(WEBHOOK).payload(failure_alert(log_tail="<&>" * 500 + "end"))["blocks"]
    text = next(
        b["text"]["text"] for b in blocks if "Last lines" in b.get("text", {}).get("text", "")
    )
    assert len(text) <= 3000 and text.endswith("end```")
