import smtplib

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage

from orchestrator.notifications.email import EmailChannel, classify
from orchestrator.notifications.events import Alert
from tests.notifications.conftest import RUN_URL, failure_alert

FAILURE_TEXT = f"""FAILED: nightly-billing (attempt 4/4)

nightly-billing failed on its last attempt (4 of 4); it will not be retried until its next \
scheduled run.

Task: nightly-billing
Definition: Send invoices
Attempt: 4 of 4
Duration: 12.3 s
Queue: billing
Started: 2026-03-01 12:00:00 UTC

Error: ConnectionError
db <down> & `x`

3 similar alerts suppressed since the previous one (cooldown).

View the run: {RUN_URL}

-- 
Sent by orchestrator. Task arguments are never included in alerts.
"""  # noqa: W291  (the signature separator is "-- ")

ROW = '<tr><th style="text-align: left; padding: 2px 12px 2px 0;">{}</th><td>{}</td></tr>'
FAILURE_HTML = (
    """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>FAILED: nightly-billing (attempt 4/4)</title></head>
<body style="font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; color: #1d1d1f;">
<h2 style="margin: 0 0 8px;">FAILED: nightly-billing (attempt 4/4)</h2>
<p>nightly-billing failed on its last attempt (4 of 4); it will not be retried until its next \
scheduled run.</p>
<table style="border-collapse: collapse;">
"""
    + "\n".join(
        ROW.format(label, value)
        for label, value in [
            ("Task", "nightly-billing"),
            ("Definition", "Send invoices"),
            ("Attempt", "4 of 4"),
            ("Duration", "12.3 s"),
            ("Queue", "billing"),
            ("Started", "2026-03-01 12:00:00 UTC"),
        ]
    )
    + f"""
</table>
<h3 style="margin: 16px 0 4px;">ConnectionError</h3>
<pre style="white-space: pre-wrap; background: #f5f5f7; padding: 8px;">\
db &lt;down&gt; &amp; `x`</pre>
<p style="color: #6e6e73;">3 similar alerts suppressed since the previous one (cooldown).</p>
<p><a href="{RUN_URL}">View the run</a></p>
<p style="color: #6e6e73; font-size: 12px;">Sent by orchestrator. Task arguments are never \
included in alerts.</p>
</body>
</html>
"""
)


def test_failure_email_parts_are_exact():
    parts = EmailChannel("ops@example.com, oncall@example.com").payload(failure_alert())
    assert parts.subject == "[orchestrator] FAILED: nightly-billing (attempt 4/4)"
    assert parts.text == FAILURE_TEXT
    assert parts.html == FAILURE_HTML
    assert parts.to == ("ops@example.com", "oncall@example.com")
    assert parts.from_email == "orchestrator@example.com"


@pytest.mark.parametrize(
    ("event", "subject"),
    [
        ("retry", "[orchestrator] RETRYING: nightly-billing (attempt 4/4)"),
        ("recovery", "[orchestrator] RECOVERED: nightly-billing (attempt 4/4)"),
    ],
)
def test_subjects_per_event(event, subject):
    assert EmailChannel("a@example.com").payload(failure_alert(event=event)).subject == subject


def test_a_retry_email_gives_the_next_attempt_time():
    import datetime as dt

    alert = failure_alert(
        event="retry", attempt=2, next_retry_at=dt.datetime(2026, 3, 1, 12, 5, tzinfo=dt.UTC)
    )
    text = EmailChannel("a@example.com").payload(alert).text
    assert "Next retry: 2026-03-01 12:05:00 UTC" in text


def test_newlines_in_task_names_cannot_inject_headers():
    alert = failure_alert(
        task_name="evil\r\nBcc: victim@example.com\nX-Injected: 1",
        error_type="Boom\r\nSubject: forged",
    )
    EmailChannel("ops@example.com").notify(alert)
    (message,) = mail.outbox
    assert message.subject == (
        "[orchestrator] FAILED: evil Bcc: victim@example.com X-Injected: 1 (attempt 4/4)"
    )
    raw = message.message().as_string()
    header_block = raw.split("\n\n", 1)[0]
    assert "\nBcc:" not in header_block
    assert "\nX-Injected" not in header_block
    assert message.bcc == []
    assert message.recipients() == ["ops@example.com"]


def test_a_header_the_email_backend_refuses_is_a_permanent_error():
    # Django up to 5.2 raises BadHeaderError, Django 6.0 Python's own ValueError: both are
    # ValueErrors, and classify() must not touch the deprecated BadHeaderError name.
    with pytest.raises(ValueError) as refused:
        EmailMessage("line\nbreak", "body", "from@example.com", ["to@example.com"]).send()
    error = classify(refused.value)
    assert error.permanent
    assert str(error).startswith("Invalid email header or address: ")


def test_email_has_text_and_html_parts():
    EmailChannel("ops@example.com").notify(failure_alert())
    (message,) = mail.outbox
    assert message.body == FAILURE_TEXT
    assert message.alternatives[0][1] == "text/html"
    assert message.alternatives[0][0] == FAILURE_HTML


def test_kwargs_never_appear_because_alerts_do_not_carry_them():
    assert "kwargs" not in Alert.__dataclass_fields__


def test_long_errors_are_not_expanded_in_the_subject():
    subject = EmailChannel("a@example.com").payload(failure_alert(task_name="t" * 500)).subject
    assert len(subject) == 200
    assert "\n" not in subject


@pytest.mark.parametrize(
    "target", ["a@example.com", "a@example.com, b@example.org", "a@x.io;b@x.io"]
)
def test_valid_targets(target):
    EmailChannel.validate_target(target)


@pytest.mark.parametrize("target", ["", "not-an-address", "a@example.com, nope"])
def test_invalid_targets(target):
    with pytest.raises(ValidationError) as info:
        EmailChannel.validate_target(target)
    assert "target" in info.value.message_dict


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"No such user")}), True),
        (smtplib.SMTPRecipientsRefused({"a@example.com": (450, b"Try later")}), False),
        (smtplib.SMTPDataError(451, b"Local error"), False),
        (smtplib.SMTPDataError(554, b"Rejected"), True),
        (smtplib.SMTPAuthenticationError(535, b"Bad credentials"), True),
        (smtplib.SMTPSenderRefused(553, b"Sender refused", "x@example.com"), True),
        (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), False),
        (ConnectionRefusedError(111, "Connection refused"), False),
        (TimeoutError("timed out"), False),
    ],
)
def test_email_errors_are_classified(error, permanent):
    result = classify(error)
    assert result.permanent is permanent


def test_anymail_errors_are_classified_by_status():
    from anymail.exceptions import AnymailAPIError, AnymailRecipientsRefused

    assert classify(AnymailRecipientsRefused("refused")).permanent
    assert classify(AnymailAPIError("bad request", status_code=400)).permanent
    assert not classify(AnymailAPIError("unavailable", status_code=503)).permanent
    assert not classify(AnymailAPIError("slow down", status_code=429)).permanent


def test_anymail_test_backend_records_the_alert(settings):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    EmailChannel("ops@example.com").notify(failure_alert())
    (message,) = mail.outbox
    assert message.subject == "[orchestrator] FAILED: nightly-billing (attempt 4/4)"


def test_real_smtp_server_receives_both_parts(settings, smtp_server):
    for key, value in smtp_server.settings().items():
        setattr(settings, key, value)
    EmailChannel("ops@example.com").notify(failure_alert())
    (received,) = smtp_server.messages
    assert received.rcpt_tos == ["ops@example.com"]
    assert received.message["Subject"] == "[orchestrator] FAILED: nightly-billing (attempt 4/4)"
    assert received.part("text/plain").replace("\r\n", "\n") == FAILURE_TEXT
    assert "<h2" in received.part("text/html")


def test_a_refused_recipient_is_permanent(settings, smtp_server):
    from orchestrator.notifications.base import NotificationError

    for key, value in smtp_server.settings().items():
        setattr(settings, key, value)
    smtp_server.refuse.add("gone@example.com")
    with pytest.raises(NotificationError) as info:
        EmailChannel("gone@example.com").notify(failure_alert())
    assert info.value.permanent
    assert "gone@example.com" in str(info.value)


def test_a_failure_email_quotes_the_last_lines_of_the_log_escaped_in_html():
    tail = "INFO job: <b>step</b> 1\nERROR job: gave up"
    parts = EmailChannel("ops@example.com").payload(failure_alert(log_tail=tail))
    assert "Last lines of the log:\nINFO job: <b>step</b> 1\nERROR job: gave up\n" in parts.text
    assert "INFO job: &lt;b&gt;step&lt;/b&gt; 1\nERROR job: gave up</pre>" in parts.html
    without = EmailChannel("ops@example.com").payload(failure_alert())
    assert "Last lines of the log" not in without.text + without.html
