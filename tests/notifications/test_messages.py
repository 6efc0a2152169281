"""The wording every channel shares: headlines, summaries, fields, fallback text."""

import datetime as dt

from orchestrator.notifications import messages
from orchestrator.notifications.events import Alert, Report, ReportRow
from tests.notifications.conftest import RUN_URL, T0, failure_alert


def test_one_line_removes_every_line_break():
    assert messages.one_line("a\r\nb\x00c\u2028d\te  f") == "a b c d e f"


def test_summaries():
    assert messages.summary(failure_alert(attempt=1)) == (
        "nightly-billing failed with an error that is not retried (attempt 1 of 4); it runs "
        "again at its next scheduled time."
    )
    assert messages.suppressed_note(failure_alert(suppressed_count=1)) == (
        "1 similar alert suppressed since the previous one (cooldown)."
    )
    assert messages.suppressed_note(failure_alert(suppressed_count=0)) == ""


def test_headlines_per_event():
    assert [
        messages.headline(failure_alert(event=e)) for e in ("failure", "retry", "recovery")
    ] == [
        "FAILED: nightly-billing (attempt 4/4)",
        "RETRYING: nightly-billing (attempt 4/4)",
        "RECOVERED: nightly-billing (attempt 4/4)",
    ]
    assert messages.headline(Alert(event="test", task_name="x")) == (
        "TEST: notifications from orchestrator work"
    )


def test_a_task_name_with_line_breaks_cannot_forge_a_second_line():
    alert = failure_alert(task_name="billing\r\nBcc: evil@example.com")
    assert "\n" not in messages.headline(alert)
    assert messages.headline(alert) == "FAILED: billing Bcc: evil@example.com (attempt 4/4)"


def test_fields_leave_out_what_the_run_does_not_have():
    retry = failure_alert(event="retry", next_retry_at=T0 + dt.timedelta(minutes=2))
    labels = [label for label, _ in messages.fields(retry)]
    assert labels == ["Task", "Definition", "Attempt", "Duration", "Queue", "Started", "Next retry"]
    bare = Alert(event="failure", task_name="x")
    assert dict(messages.fields(bare))["Duration"] == "unknown"
    assert dict(messages.fields(bare))["Queue"] == "default"
    assert dict(messages.fields(failure_alert(consecutive_failures=3)))["Failures in a row"] == "3"


def test_the_fallback_text_has_the_headline_error_note_and_link():
    assert messages.fallback_text(failure_alert()).splitlines() == [
        "FAILED: nightly-billing (attempt 4/4)",
        "nightly-billing failed on its last attempt (4 of 4); it will not be retried until its "
        "next scheduled run.",
        "ConnectionError: db <down> & `x`",
        "3 similar alerts suppressed since the previous one (cooldown).",
        f"Run: {RUN_URL}",
    ]


def test_report_lines_are_cut_at_the_limit_and_say_how_many_more():
    rows = tuple(ReportRow(f"task-{n}", 10, n, 1, "E: x", T0) for n in range(1, 4))
    report = Report(since=T0, until=T0, period="24h", rows=rows)
    assert messages.report_headline(report) == "REPORT: 3 failing tasks in the last 24h"
    lines = messages.report_text_lines(report, limit=2)
    assert lines[0].startswith("task-1: 1 of 10 runs failed (10%), 1 retries; last error ")
    assert lines[-1] == "... and 1 more"
