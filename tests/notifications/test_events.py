import datetime as dt

from orchestrator.notifications.events import (
    RUN_EVENTS,
    Event,
    Report,
    ReportRow,
    absolute_url,
    message_from_dict,
    truncate,
)
from tests.notifications.conftest import T0, failure_alert


def test_alerts_and_reports_survive_the_json_round_trip():
    alert = failure_alert(next_retry_at=T0 + dt.timedelta(minutes=1))
    assert message_from_dict(alert.to_dict()) == alert
    report = Report(
        since=T0, until=T0, period="1h", rows=(ReportRow("a", 2, 1, 0, "E: x", T0, "", 3),)
    )
    assert message_from_dict(report.to_dict()) == report


def test_truncate():
    assert truncate("abc", 3) == "abc"
    assert truncate("abcdef", 4) == "abc…"


def test_the_events_a_run_can_cause_leave_out_the_report():
    assert [e.value for e in Event] == [
        "retry",
        "failure",
        "recovery",
        "report",
        "paused",
        "missed",
        "scheduler",
    ]
    assert Event.REPORT not in RUN_EVENTS


def test_links_are_absolute_when_the_base_url_is_set(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BASE_URL": "https://ops.example.com/"}
    assert absolute_url("/admin/x/") == "https://ops.example.com/admin/x/"
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BASE_URL": ""}
    assert absolute_url("/admin/x/") == "/admin/x/"
