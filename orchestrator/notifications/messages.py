"""Wording shared by every channel: headlines, one-line summaries, labelled fields.

Pure functions of an :class:`~.events.Alert` or :class:`~.events.Report`; channels lay the
result out in their own format (Block Kit, email parts).
"""

from __future__ import annotations

import datetime as dt
import re

from orchestrator.humanize import format_duration
from orchestrator.notifications.events import TEST_EVENT, Alert, Report, truncate

EVENT_WORDS = {
    "failure": "FAILED",
    "retry": "RETRYING",
    "recovery": "RECOVERED",
    "report": "REPORT",
    "paused": "PAUSED",
    "missed": "MISSED",
    "scheduler": "SCHEDULER",
    TEST_EVENT: "TEST",
}
# Control characters (newlines included) would let a task name or error text forge email
# headers or break a one-line title.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def one_line(text: str) -> str:
    """``text`` with control characters and newlines replaced by single spaces."""
    return " ".join(_CONTROL.sub(" ", text or "").split())


def format_time(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def headline(alert: Alert) -> str:
    """``FAILED: nightly-billing (attempt 4/4)``: one line, safe for a subject or a header."""
    word = EVENT_WORDS.get(alert.event, alert.event.upper())
    if alert.event == TEST_EVENT:
        return f"{word}: notifications from orchestrator work"
    if alert.event in ("missed", "scheduler", "paused"):
        # About the task (or the scheduler), not one attempt of it.
        return f"{word}: {one_line(alert.task_name)}"
    return f"{word}: {one_line(alert.task_name)} (attempt {alert.attempt}/{alert.max_attempts})"


def summary(alert: Alert) -> str:
    """One sentence on what happened and what happens next."""
    name = one_line(alert.task_name)
    if alert.event == "missed":
        return f"{name} did not run: {one_line(alert.note)}."
    if alert.event == "scheduler":
        return f"{one_line(alert.note)}."
    if alert.event == "paused":
        return (
            f"{name} was paused ({one_line(alert.note)}); its runs are skipped until someone "
            "resumes it."
        )
    if alert.event == "failure" and alert.note:
        return (
            f"{name} failed and is {one_line(alert.note)} (attempt {alert.attempt} of "
            f"{alert.max_attempts}); it runs again at its next scheduled time."
        )
    if alert.event == "failure":
        if alert.attempt >= alert.max_attempts:
            return (
                f"{name} failed on its last attempt ({alert.attempt} of "
                f"{alert.max_attempts}); it will not be retried until its next scheduled run."
            )
        return (
            f"{name} failed with an error that is not retried (attempt {alert.attempt} "
            f"of {alert.max_attempts}); it runs again at its next scheduled time."
        )
    if alert.event == "retry":
        return (
            f"Attempt {alert.attempt} of {alert.max_attempts} of {name} failed; the next "
            f"attempt is due at {format_time(alert.next_retry_at)}."
        )
    if alert.event == "recovery":
        return f"{name} succeeded again after a final failure."
    if alert.event == TEST_EVENT:
        return "This is a test notification sent from the orchestrator admin."
    return name


def fields(alert: Alert) -> list[tuple[str, str]]:
    """Labelled facts about the run, in display order; absent facts are left out."""
    if alert.event in (TEST_EVENT, "scheduler"):
        return []
    if alert.event == "missed":
        return [
            ("Task", one_line(alert.task_name)),
            ("Definition", one_line(alert.definition) or "unknown"),
            ("Queue", one_line(alert.queue) or "default"),
        ]
    rows: list[tuple[str, str]] = [
        ("Task", one_line(alert.task_name)),
        ("Definition", one_line(alert.definition) or "unknown"),
        ("Attempt", f"{alert.attempt} of {alert.max_attempts}"),
        ("Duration", format_duration(alert.duration, missing="unknown")),
        ("Queue", one_line(alert.queue) or "default"),
    ]
    if alert.started_at is not None:
        rows.append(("Started", format_time(alert.started_at)))
    if alert.event == "retry" and alert.next_retry_at is not None:
        rows.append(("Next retry", format_time(alert.next_retry_at)))
    if alert.consecutive_failures > 1:
        rows.append(("Failures in a row", str(alert.consecutive_failures)))
    return rows


def error_line(alert: Alert) -> str:
    """``RuntimeError: boom`` on one line, or an empty string when the run had no error."""
    if not (alert.error_type or alert.error_message):
        return ""
    kind = one_line(alert.error_type) or "Error"
    return f"{kind}: {one_line(alert.error_message)}" if alert.error_message else kind


def suppressed_note(alert: Alert) -> str:
    n = alert.suppressed_count
    if n <= 0:
        return ""
    alerts = "alert" if n == 1 else "alerts"
    return f"{n} similar {alerts} suppressed since the previous one (cooldown)."


def fallback_text(alert: Alert) -> str:
    """The plain-text version of an alert (Slack notifications, screen readers, email text)."""
    lines = [headline(alert), summary(alert)]
    if error := error_line(alert):
        lines.append(error)
    if note := suppressed_note(alert):
        lines.append(note)
    if alert.run_url:
        lines.append(f"Run: {alert.run_url}")
    return "\n".join(lines)


def report_headline(report: Report) -> str:
    failing = len(report.rows)
    tasks = "task" if failing == 1 else "tasks"
    return f"REPORT: {failing} failing {tasks} in the last {one_line(report.period)}"


def percent(rate: float) -> str:
    return f"{rate * 100:.0f}%"


def report_row_line(row_name: str, runs: int, failures: int, rate: float, retries: int) -> str:
    return f"{row_name}: {failures} of {runs} runs failed ({percent(rate)}), {retries} retries"


def report_text_lines(report: Report, limit: int | None = None) -> list[str]:
    rows = report.rows if limit is None else report.rows[:limit]
    lines = []
    for row in rows:
        line = report_row_line(
            one_line(row.task_name), row.runs, row.failures, row.failure_rate, row.retries
        )
        if row.last_error:
            line += (
                f"; last error {format_time(row.last_error_at)}: "
                f"{truncate(one_line(row.last_error), 200)}"
            )
        lines.append(line)
    if limit is not None and len(report.rows) > limit:
        lines.append(f"... and {len(report.rows) - limit} more")
    return lines
