"""Email through Django's email backend, so SMTP and every django-anymail provider work."""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.validators import validate_email
from django.template.loader import render_to_string

from orchestrator.conf import conf
from orchestrator.notifications import messages
from orchestrator.notifications.base import Channel, NotificationError
from orchestrator.notifications.events import Alert, Message, Report, truncate
from orchestrator.notifications.redact import redact

SUBJECT_PREFIX = "[orchestrator] "
SUBJECT_CHARS = 200
MAX_RECIPIENTS = 50
# Django's SMTP backend waits forever by default; an alert must not.
SMTP_TIMEOUT = 30
SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


@dataclass(frozen=True)
class EmailParts:
    """An email as it will be sent: single-line subject, text part and HTML part."""

    subject: str
    text: str
    html: str
    to: tuple[str, ...]
    from_email: str


def split_addresses(target: str) -> list[str]:
    return [a.strip() for a in (target or "").replace(";", ",").split(",") if a.strip()]


def subject_for(message: Message) -> str:
    if isinstance(message, Report):
        line = messages.report_headline(message)
    else:
        line = messages.headline(message)
    # one_line() has removed CR/LF already; this is the header-injection guard in one place.
    return truncate(messages.one_line(SUBJECT_PREFIX + line), SUBJECT_CHARS)


def alert_context(alert: Alert) -> dict[str, Any]:
    return {
        "alert": alert,
        "headline": messages.headline(alert),
        "summary": messages.summary(alert),
        "fields": messages.fields(alert),
        "error_type": messages.one_line(alert.error_type),
        "error_message": alert.error_message,
        "suppressed_note": messages.suppressed_note(alert),
        "run_url": alert.run_url,
        "log_tail": alert.log_tail,
    }


def report_context(report: Report) -> dict[str, Any]:
    rows = [
        {
            "task_name": messages.one_line(row.task_name),
            "url": row.url,
            "runs": row.runs,
            "failures": row.failures,
            "retries": row.retries,
            "rate": messages.percent(row.failure_rate),
            "last_error": truncate(messages.one_line(row.last_error), 300),
            "last_error_at": messages.format_time(row.last_error_at) if row.last_error else "",
        }
        for row in report.rows
    ]
    return {
        "report": report,
        "headline": messages.report_headline(report),
        "since": messages.format_time(report.since),
        "until": messages.format_time(report.until),
        "rows": rows,
    }


def classify(err: Exception) -> NotificationError:
    """One NotificationError for whatever the email backend raised."""
    name = type(err).__name__
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in err.recipients.values()]
        permanent = bool(codes) and all(code >= 500 for code in codes)
        refused = ", ".join(sorted(err.recipients))
        return NotificationError(
            f"SMTP server refused recipient(s) {refused} (codes {codes})", permanent=permanent
        )
    if isinstance(err, smtplib.SMTPResponseException):
        # 5xx: the server will answer the same way again (auth failed, sender refused, 550).
        return NotificationError(
            f"SMTP error {err.smtp_code}: {redact(_decode(err.smtp_error))}",
            permanent=err.smtp_code >= 500,
        )
    if type(err).__module__.startswith("anymail"):
        status = getattr(err, "status_code", None)
        permanent = name in {"AnymailRecipientsRefused", "AnymailConfigurationError"} or (
            isinstance(status, int) and 400 <= status < 500 and status != 429
        )
        return NotificationError(
            f"Email provider error {name}" + (f" (HTTP {status})" if status else ""),
            permanent=permanent,
        )
    if isinstance(err, ValueError):
        # A header with a line break or an address Django cannot encode: Django up to 5.2 raises
        # BadHeaderError (a ValueError), Django 6.0 Python's email package's own ValueError
        # (BadHeaderError is deprecated there). The same message fails the same way again.
        return NotificationError(f"Invalid email header or address: {err}", permanent=True)
    # Refused connections, timeouts, dropped sessions: worth another try.
    return NotificationError(f"Email not sent: {name}: {redact(str(err))}")


def _decode(value: bytes | str) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return messages.one_line(text)


class EmailChannel(Channel):
    """Sends a text and an HTML part to a comma-separated list of addresses."""

    kind = "email"
    label = "Email"

    @classmethod
    def validate_target(cls, target: str) -> None:
        addresses = split_addresses(target)
        if not addresses:
            raise ValidationError({"target": "Enter at least one email address."})
        if len(addresses) > MAX_RECIPIENTS:
            raise ValidationError({"target": f"Enter at most {MAX_RECIPIENTS} addresses."})
        bad = []
        for address in addresses:
            try:
                validate_email(address)
            except ValidationError:
                bad.append(address)
        if bad:
            raise ValidationError(
                {
                    "target": f"Not a valid email address: {', '.join(bad)}. "
                    "Separate addresses with commas."
                }
            )

    def payload(self, message: Message) -> EmailParts:
        if isinstance(message, Report):
            context = report_context(message)
            template = "report"
        else:
            context = alert_context(message)
            template = "alert"
        return EmailParts(
            subject=subject_for(message),
            text=render_to_string(f"orchestrator/email/{template}.txt", context).strip() + "\n",
            html=render_to_string(f"orchestrator/email/{template}.html", context).strip() + "\n",
            to=tuple(split_addresses(self.target)),
            from_email=conf.EMAIL_FROM,
        )

    def notify(self, message: Message) -> None:
        parts = self.payload(message)
        if not parts.to:
            raise NotificationError("No recipient address", permanent=True)
        try:
            connection = None
            if settings.EMAIL_BACKEND == SMTP_BACKEND and settings.EMAIL_TIMEOUT is None:
                connection = get_connection(timeout=SMTP_TIMEOUT)
            email = EmailMultiAlternatives(
                subject=parts.subject,
                body=parts.text,
                from_email=parts.from_email,
                to=list(parts.to),
                connection=connection,
            )
            email.attach_alternative(parts.html, "text/html")
            sent = email.send(fail_silently=False)
        except Exception as err:
            raise classify(err) from None
        if sent == 0:
            raise NotificationError("The email backend reported that nothing was sent")
