import datetime as dt

import pytest

from orchestrator.notifications import messages
from orchestrator.notifications.events import (
    Alert,
    Report,
    ReportRow,
    alert_from_run,
    message_from_dict,
    truncate,
)
from tests.notifications.conftest import T0, failure_alert
from tests.utils import make_run, make_scheduled_task


def test_alerts_and_reports_survive_the_json_round_trip():
    alert = failure_alert(next_retry_at=T0 + dt.timedelta(minutes=1))
    assert message_from_dict(alert.to_dict()) == alert
    report = Report(
        since=T0, until=T0, period="1h", rows=(ReportRow("a", 2, 1, 0, "E: x", T0, "", 3),)
    )
    assert message_from_dict(report.to_dict()) == report


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
    alert = alert_from_run("retry", run)
    assert alert.task_name == "billing"
    assert alert.definition == "echo"
    assert (alert.attempt, alert.max_attempts, alert.duration) == (2, 4, 3.0)
    assert alert.queue == "money"
    assert len(alert.error_message) == 500 and alert.error_message.endswith("…")
    assert alert.next_retry_at == T0
    assert alert.run_url == f"http://testserver/admin/orchestrator/taskrun/{run.pk}/change/"
    assert "hunter2" not in str(alert.to_dict())
    assert alert_from_run("failure", run).next_retry_at is None


def test_one_line_removes_every_line_break():
    assert messages.one_line("a\r\nb\x00c\u2028d\te  f") == "a b c d e f"


def test_truncate():
    assert truncate("abc", 3) == "abc"
    assert truncate("abcdef", 4) == "abc…"


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
