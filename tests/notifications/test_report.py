import datetime as dt

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from freezegun import freeze_time

from orchestrator import builtin_tasks
from orchestrator.models import NotificationDelivery, TaskRun
from orchestrator.notifications.report import build_report, parse_period
from tests.utils import make_channel, make_run, make_scheduled_task

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", dt.timedelta(hours=24)),
        ("30m", dt.timedelta(minutes=30)),
        ("7d", dt.timedelta(days=7)),
        ("2w", dt.timedelta(weeks=2)),
        ("90s", dt.timedelta(seconds=90)),
        (" 12 h ", dt.timedelta(hours=12)),
    ],
)
def test_periods(text, expected):
    assert parse_period(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "0h", "1y", "-1h", "1.5h"])
def test_invalid_periods(text):
    with pytest.raises(ValueError, match="not a period"):
        parse_period(text)


def at(minutes_ago: float) -> dt.datetime:
    return NOW - dt.timedelta(minutes=minutes_ago)


@pytest.fixture
def history(db):
    """billing: 2 of 3 runs failed; sync: 1 of 4 failed; heartbeat: fine; old: failed long ago."""
    billing = make_scheduled_task("billing", "tests.sample_tasks.always_fails")
    sync = make_scheduled_task("sync", "tests.sample_tasks.always_fails")
    heartbeat = make_scheduled_task("heartbeat", "tests.sample_tasks.noop")
    old = make_scheduled_task("old", "tests.sample_tasks.always_fails")
    make_run(billing, status="succeeded", started_at=at(300))
    make_run(billing, status="retried", started_at=at(200), error_type="IOError", error_message="x")
    make_run(billing, status="failed", started_at=at(190), error_type="IOError", error_message="y")
    make_run(
        billing, status="failed", started_at=at(10), error_type="RuntimeError", error_message="boom"
    )
    for minutes in (400, 300, 200):
        make_run(sync, status="succeeded", started_at=at(minutes))
    make_run(sync, status="lost", started_at=at(30), error_type="WorkerLost", error_message="gone")
    make_run(heartbeat, status="succeeded", started_at=at(5))
    make_run(old, status="failed", started_at=at(60 * 48), error_type="E", error_message="old")
    make_run(billing, status="running", started_at=at(1))
    return billing, sync


def test_the_report_lists_failing_tasks_worst_first(history):
    billing, _ = history
    report = build_report("24h", now=NOW)
    assert [(r.task_name, r.runs, r.failures, r.retries) for r in report.rows] == [
        ("billing", 3, 2, 1),
        ("sync", 4, 1, 0),
    ]
    first = report.rows[0]
    assert first.failure_rate == pytest.approx(2 / 3)
    assert first.last_error == "RuntimeError: boom"
    assert first.last_error_at == at(10)
    assert first.url == f"http://testserver/admin/orchestrator/scheduledtask/{billing.pk}/change/"
    assert report.rows[1].last_error == "WorkerLost: gone"
    assert (report.total_runs, report.total_failures) == (8, 3)
    assert (report.since, report.until) == (NOW - dt.timedelta(hours=24), NOW)


def test_a_quiet_period_has_no_rows(history):
    report = build_report("5m", now=NOW)
    assert report.rows == ()
    assert not report.has_failures


def test_the_command_emails_the_report_to_the_given_addresses(history, capsys):
    with freeze_time(NOW):
        call_command("orchestrator_report", "--since", "24h", "--to", "a@example.com")
    (message,) = mail.outbox
    assert message.to == ["a@example.com"]
    assert message.subject == "[orchestrator] REPORT: 2 failing tasks in the last 24h"
    assert "billing: 2 of 3 runs failed (67%), 1 retries" in message.body
    assert "<table" in message.alternatives[0][0]
    assert "Sent to a@example.com." in capsys.readouterr().out


def test_the_command_sends_to_report_channels_and_logs_the_delivery(history):
    channel = make_channel("reports", events=["report"], target="reports@example.com")
    make_channel("alerts-only", target="alerts@example.com")
    with freeze_time(NOW):
        call_command("orchestrator_report")
    assert [m.to for m in mail.outbox] == [["reports@example.com"]]
    delivery = NotificationDelivery.objects.get()
    assert (delivery.channel, delivery.event, delivery.status) == (channel, "report", "sent")


def test_nothing_is_sent_when_nothing_failed_unless_always(history, capsys):
    with freeze_time(NOW):
        call_command("orchestrator_report", "--since", "5m", "--to", "a@example.com")
        assert mail.outbox == []
        assert "Nothing failed" in capsys.readouterr().out
        call_command("orchestrator_report", "--since", "5m", "--to", "a@example.com", "--always")
    (message,) = mail.outbox
    assert message.subject == "[orchestrator] REPORT: 0 failing tasks in the last 5m"
    assert "No task failed." in message.body


def test_the_command_needs_a_destination(db):
    with pytest.raises(CommandError, match="No destination"):
        call_command("orchestrator_report")


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--since", "yesterday"], "not a period"), (["--to", "nobody"], "not an email address")],
)
def test_the_command_refuses_bad_arguments(db, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("orchestrator_report", *args)


def test_an_undeliverable_report_fails_the_command(history, settings, smtp_server):
    for key, value in smtp_server.settings().items():
        setattr(settings, key, value)
    smtp_server.refuse.add("gone@example.com")
    with freeze_time(NOW), pytest.raises(CommandError, match="could not be delivered"):
        call_command("orchestrator_report", "--to", "gone@example.com")


def test_the_built_in_task_sends_and_summarises(history):
    with freeze_time(NOW):
        result = builtin_tasks.failure_report(since="24h", to=["a@example.com"])
    assert result == {
        "since": (NOW - dt.timedelta(hours=24)).isoformat(),
        "failing_tasks": 2,
        "sent": ["a@example.com"],
    }
    assert len(mail.outbox) == 1


def test_the_built_in_task_stays_quiet_when_nothing_failed(db):
    assert builtin_tasks.failure_report(to=["a@example.com"])["sent"] == []
    assert mail.outbox == []


def test_the_built_in_task_is_an_allowed_task_definition(db):
    task = make_scheduled_task(
        "report", "orchestrator.builtin_tasks.failure_report", kwargs={"since": "7d"}
    )
    assert task.task_definition.resolve() is builtin_tasks.failure_report


def test_the_built_in_task_raises_when_a_destination_fails(history, monkeypatch):
    from orchestrator.notifications.base import NotificationError
    from orchestrator.notifications.email import EmailChannel

    def refuse(self, message):
        raise NotificationError("SMTP server refused recipient(s) x", permanent=True)

    monkeypatch.setattr(EmailChannel, "notify", refuse)
    with freeze_time(NOW), pytest.raises(RuntimeError, match=r"not delivered to a@example\.com"):
        builtin_tasks.failure_report(to=["a@example.com"])


def test_report_runs_exclude_running_and_skipped(history):
    billing, _ = history
    make_run(billing, status=TaskRun.Status.SKIPPED, started_at=at(3))
    assert build_report("24h", now=NOW).rows[0].runs == 3


# --- the built-in task's arguments are checked like any task's ----------------------------------

REPORT_PATH = "orchestrator.builtin_tasks.failure_report"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"to": "ops@example.com"}, "to must be a list of email addresses"),
        ({"to": ["ops@example.com", "not an address"]}, "'not an address' is not an email"),
        ({"to": [["ops@example.com"]]}, "to must list email addresses as text"),
        ({"since": "yesterday"}, "since: 'yesterday' is not a period"),
        ({"since": 24}, "since must be a period"),
        ({"always": "yes"}, "always must be true or false"),
    ],
)
def test_the_built_in_report_refuses_bad_arguments_on_the_kwargs_field(db, kwargs, message):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as raised:
        make_scheduled_task("report", REPORT_PATH, kwargs=kwargs)
    assert message in " ".join(raised.value.message_dict["kwargs"])


def test_the_api_refuses_a_report_sent_to_a_string(api):
    from django.urls import reverse

    from tests.utils import make_definition

    definition = make_definition("report", REPORT_PATH)
    body = {
        "name": "report",
        "task_definition": definition.pk,
        "cron": "0 6 * * *",
        "kwargs": {"to": "ops@example.com"},
    }
    response = api.post(reverse("orchestrator:api-scheduled-task-list"), body, format="json")
    assert response.status_code == 400
    assert "to must be a list of email addresses" in " ".join(response.json()["kwargs"])


def test_the_admin_refuses_a_report_sent_to_a_string(admin_web):
    from django.urls import reverse

    from tests.utils import make_definition

    definition = make_definition("report", REPORT_PATH)
    data = {
        "name": "report",
        "task_definition": definition.pk,
        "cron": "0 6 * * *",
        "timezone": "UTC",
        "kwargs": '{"to": "ops@example.com"}',
        "max_retries": 3,
        "retry_backoff": "exponential",
        "retry_delay": 60,
        "retry_backoff_max": 3600,
        "overlap": "allow",
        "catch_up": "none",
        "catch_up_limit": 1,
    }
    response = admin_web.post(reverse("admin:orchestrator_scheduledtask_add"), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["kwargs"]
    assert "to must be a list of email addresses" in " ".join(errors)


def test_a_report_sent_to_a_string_in_the_database_fails_its_run_and_mails_nothing(history):
    from orchestrator import dispatcher
    from orchestrator.models import ScheduledTask

    task = make_scheduled_task("report", REPORT_PATH, kwargs={"always": True})
    ScheduledTask.objects.filter(pk=task.pk).update(kwargs={"to": "ops@example.com"})
    outcome = dispatcher.run_task(dispatcher.Attempt(task.pk))
    assert outcome.run.status == TaskRun.Status.FAILED
    assert "to must be a list of email addresses" in outcome.run.error_message
    assert mail.outbox == []


def test_the_built_in_report_called_directly_refuses_a_string(db):
    with pytest.raises(ValueError, match="to must be a list of email addresses"):
        builtin_tasks.failure_report(to="ops@example.com")  # type: ignore[arg-type]
    assert mail.outbox == []
