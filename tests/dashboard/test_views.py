"""The operator dashboard: permissions, content, actions, filters and query counts."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from orchestrator import rollups
from orchestrator.models import ScheduledTask, TaskRun
from tests.utils import make_channel, make_definition, make_run, make_scheduled_task
from tests.utils import make_staff_user as make_user

pytestmark = pytest.mark.django_db

DASHBOARD = reverse("orchestrator:dashboard")
VIEW = ("orchestrator.view_scheduledtask",)
RUNS = "orchestrator.view_taskrun"


def client_for(user: User | None, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def task() -> ScheduledTask:
    return make_scheduled_task("nightly-report", cron="30 6 * * mon-fri")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Record run_now() calls instead of sending to a broker (the API test covers the worker)."""
    calls: list[tuple[int, str]] = []

    def fake_run_now(
        self: ScheduledTask, kwargs: Any = None, user: Any = None, trigger: str = "manual"
    ) -> SimpleNamespace:
        calls.append((self.pk, str(trigger)))
        return SimpleNamespace(id=f"celery-{len(calls)}")

    monkeypatch.setattr(ScheduledTask, "run_now", fake_run_now)
    return calls


def action_url(name: str, task: ScheduledTask) -> str:
    return reverse(f"orchestrator:task-{name}", args=[task.pk])


# --- permissions -------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["overview", "detail"])
def test_anonymous_users_are_sent_to_the_admin_login(task: ScheduledTask, page: str) -> None:
    url = DASHBOARD if page == "overview" else reverse("orchestrator:task-detail", args=[task.pk])
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert "next=" in response["Location"]


@pytest.mark.parametrize("action", ["run", "enable", "disable"])
def test_anonymous_posts_are_sent_to_the_login_and_change_nothing(
    task: ScheduledTask, sent: list, action: str
) -> None:
    response = Client().post(action_url(action, task))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert sent == []


def test_users_who_are_not_staff_are_sent_to_the_login_even_with_permissions(
    task: ScheduledTask, sent: list
) -> None:
    user = make_user(
        "outsider",
        "orchestrator.view_scheduledtask",
        "orchestrator.run_scheduledtask",
        is_staff=False,
    )
    client = client_for(user)
    assert client.get(DASHBOARD).status_code == 302
    assert client.post(action_url("run", task)).status_code == 302
    assert sent == []


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("get", "overview"),
        ("get", "detail"),
        ("post", "run"),
        ("post", "enable"),
        ("post", "disable"),
    ],
)
def test_staff_without_permissions_are_refused_everything(
    task: ScheduledTask, sent: list, method: str, target: str
) -> None:
    client = client_for(make_user("staff"))
    if target == "overview":
        url = DASHBOARD
    elif target == "detail":
        url = reverse("orchestrator:task-detail", args=[task.pk])
    else:
        url = action_url(target, task)
    response = getattr(client, method)(url)
    assert response.status_code == 403
    assert sent == []
    task.refresh_from_db()
    assert task.enabled is True


def test_viewers_see_the_pages_but_no_buttons_and_cannot_act(
    task: ScheduledTask, sent: list
) -> None:
    client = client_for(make_user("viewer", "orchestrator.view_scheduledtask"))
    overview = client.get(DASHBOARD)
    detail = client.get(reverse("orchestrator:task-detail", args=[task.pk]))
    assert overview.status_code == detail.status_code == 200
    for response in (overview, detail):
        assert b"Run now" not in response.content
        assert b"Disable" not in response.content
    assert client.post(action_url("run", task)).status_code == 403
    assert client.post(action_url("disable", task)).status_code == 403
    assert sent == []
    task.refresh_from_db()
    assert task.enabled is True


def test_run_now_needs_the_run_permission_and_sends_a_manual_run(
    task: ScheduledTask, sent: list
) -> None:
    user = make_user("runner", "orchestrator.view_scheduledtask", "orchestrator.run_scheduledtask")
    client = client_for(user)
    page = client.get(DASHBOARD)
    assert b"Run now" in page.content
    assert b"Disable" not in page.content  # no change permission

    response = client.post(action_url("run", task), {"next": DASHBOARD}, follow=True)

    assert sent == [(task.pk, "manual")]
    assert response.redirect_chain == [(DASHBOARD, 302)]
    assert "was sent to the workers (Celery task celery-1)" in response.content.decode()


def test_enable_and_disable_need_the_change_permission_and_save_the_task(
    task: ScheduledTask,
) -> None:
    client = client_for(make_user("editor", "orchestrator.change_scheduledtask"))

    response = client.post(action_url("disable", task))
    task.refresh_from_db()
    assert response.status_code == 302
    assert response["Location"] == reverse("orchestrator:task-detail", args=[task.pk])
    assert task.enabled is False

    client.post(action_url("enable", task))
    task.refresh_from_db()
    assert task.enabled is True


def test_disabling_updates_the_beat_entry_through_the_model_save(task: ScheduledTask) -> None:
    client = client_for(make_user("editor", "orchestrator.change_scheduledtask"))
    client.post(action_url("disable", task))
    task.refresh_from_db()
    if task.periodic_task is not None:  # beat_sync keeps disabled tasks' entries, disabled
        assert task.periodic_task.enabled is False


def test_actions_refuse_get_requests(task: ScheduledTask, sent: list) -> None:
    client = client_for(User.objects.create_superuser("root", password="pw"))
    for action in ("run", "enable", "disable"):
        assert client.get(action_url(action, task)).status_code == 405
    assert sent == []


def test_pages_answer_head_requests(task: ScheduledTask, admin_client_: Client) -> None:
    assert admin_client_.head(DASHBOARD).status_code == 200
    assert (
        admin_client_.head(reverse("orchestrator:task-detail", args=[task.pk])).status_code == 200
    )


def test_actions_need_a_csrf_token(task: ScheduledTask, sent: list) -> None:
    user = make_user("runner", "orchestrator.view_scheduledtask", "orchestrator.run_scheduledtask")
    client = client_for(user, enforce_csrf_checks=True)
    assert client.post(action_url("run", task)).status_code == 403
    assert sent == []

    page = client.get(DASHBOARD)
    token = page.context["csrf_token"]
    assert (
        client.post(action_url("run", task), {"csrfmiddlewaretoken": str(token)}).status_code == 302
    )
    assert len(sent) == 1


def test_actions_never_redirect_to_another_site(task: ScheduledTask, sent: list) -> None:
    superuser = User.objects.create_superuser("root", password="pw")
    response = client_for(superuser).post(
        action_url("run", task), {"next": "https://evil.example.com/"}
    )
    assert response["Location"] == reverse("orchestrator:task-detail", args=[task.pk])


def test_running_a_disabled_task_sends_it_and_says_the_worker_will_skip_it(
    sent: list,
) -> None:
    task = make_scheduled_task("paused", enabled=False)
    superuser = User.objects.create_superuser("root", password="pw")
    response = client_for(superuser).post(action_url("run", task), follow=True)
    assert sent == [(task.pk, "manual")]
    assert "the worker will record it as skipped" in response.content.decode()


def test_a_broker_error_becomes_a_message_not_a_server_error(
    task: ScheduledTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: ScheduledTask, *args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(ScheduledTask, "run_now", broken)
    superuser = User.objects.create_superuser("root", password="pw")
    response = client_for(superuser).post(action_url("run", task), follow=True)
    assert response.status_code == 200
    assert "Could not send “nightly-report” to the workers: ConnectionRefusedError" in (
        response.content.decode()
    )


# --- overview content --------------------------------------------------------------------------


@pytest.fixture
def admin_client_() -> Client:
    return client_for(User.objects.create_superuser("root", password="pw"))


def test_overview_shows_state_schedule_next_run_last_run_and_rate(
    task: ScheduledTask, admin_client_: Client
) -> None:
    now = timezone.now()
    for hours, status in [(50, "succeeded"), (40, "failed"), (30, "retried"), (20, "succeeded")]:
        make_run(task, status=status, started_at=now - dt.timedelta(hours=hours))
    make_run(task, status="succeeded", started_at=now - dt.timedelta(days=9))  # outside 7 days
    make_run(
        task,
        status="succeeded",
        started_at=now - dt.timedelta(hours=1),
        duration=dt.timedelta(seconds=3),
    )

    response = admin_client_.get(DASHBOARD)
    html = response.content.decode()
    row = response.context["rows"][0]

    assert row["schedule"] == task.describe_schedule()
    assert "At 06:30, Monday through Friday" in html
    assert row["next_run"] == task.next_run_at(response.context["now"])
    assert row["last_status"] == "succeeded"
    # Three successes and one failure in the window; the retried attempt is not an outcome.
    assert (row["rate"].succeeded, row["rate"].outcomes, row["rate"].percent) == (3, 4, 75)
    assert "75%" in html
    assert html.count('class="run run-') == 5  # the sparkline's bars: runs of the last 7 days
    assert "enabled" in html


def test_overview_shows_disabled_tasks_and_tasks_never_run(admin_client_: Client) -> None:
    make_scheduled_task("paused", enabled=False)
    definition = make_definition("off", "tests.sample_tasks.add", enabled=False)
    make_scheduled_task("orphaned", definition=definition, kwargs={"a": 1})
    html = admin_client_.get(DASHBOARD).content.decode()
    assert "definition disabled" in html
    assert ">disabled<" in html
    assert "never run" in html


def test_recent_failures_show_error_type_and_message(
    task: ScheduledTask, admin_client_: Client
) -> None:
    make_run(task, status="failed", error_type="ConnectionError", error_message="db down")
    make_run(task, status="retried", error_type="Timeout", error_message="retry me")
    make_run(task, status="lost", error_type="WorkerLostError", error_message="killed")
    response = admin_client_.get(DASHBOARD)
    failures = response.context["failures"]
    assert {run.status for run in failures} == {"failed", "lost"}
    html = response.content.decode()
    assert "ConnectionError" in html and "db down" in html
    assert "WorkerLostError" in html
    assert "retry me" not in html  # retry attempts stay in the task's own history


def test_filters_by_category_queue_last_status_and_state(admin_client_: Client) -> None:
    billing = make_definition("invoices", "tests.sample_tasks.noop", category="billing")
    reports = make_definition("echo", "tests.sample_tasks.echo", category="reports")
    a = make_scheduled_task("a-billing", definition=billing, queue="slow")
    b = make_scheduled_task("b-reports", definition=reports)
    c = make_scheduled_task("c-reports-off", definition=reports, enabled=False)
    make_run(a, status="failed")
    make_run(b, status="succeeded")

    def names(**params: str) -> list[str]:
        response = admin_client_.get(DASHBOARD, params)
        return [row["task"].name for row in response.context["rows"]]

    assert names() == ["a-billing", "b-reports", "c-reports-off"]
    assert names(category="billing") == ["a-billing"]
    assert names(queue="slow") == ["a-billing"]
    assert names(queue="celery") == ["b-reports", "c-reports-off"]  # blank = default queue
    assert names(status="failed") == ["a-billing"]
    assert names(status="never") == ["c-reports-off"]
    assert names(enabled="no") == ["c-reports-off"]
    assert names(category="reports", enabled="yes") == ["b-reports"]
    # The failure feed follows the filters.
    assert admin_client_.get(DASHBOARD, {"category": "reports"}).context["failures"] == []
    assert c.pk  # (used above by name)

    choices = admin_client_.get(DASHBOARD).context["choices"]
    assert choices == {"categories": ["billing", "reports"], "queues": ["celery", "slow"]}


# --- task detail -------------------------------------------------------------------------------


def test_detail_shows_history_newest_first_and_paginated(
    task: ScheduledTask, admin_client_: Client
) -> None:
    start = timezone.now() - dt.timedelta(days=1)
    TaskRun.objects.bulk_create(
        TaskRun(
            scheduled_task=task,
            status="succeeded",
            started_at=start + dt.timedelta(minutes=i),
            duration=dt.timedelta(seconds=i),
        )
        for i in range(60)
    )
    url = reverse("orchestrator:task-detail", args=[task.pk])
    first = admin_client_.get(url)
    second = admin_client_.get(url, {"page": 2})
    assert [r.duration.total_seconds() for r in first.context["page"]][:2] == [59, 58]
    assert len(first.context["page"]) == 50
    assert len(second.context["page"]) == 10
    assert "page 1 of 2 (60 runs)" in first.content.decode()
    assert "59 s" in first.content.decode()
    assert first.content.decode().count('class="run run-') == 60  # the chart covers 100 runs


def test_detail_shows_the_policy_with_its_next_retry_delays(admin_client_: Client) -> None:
    task = make_scheduled_task(
        "retrying",
        max_retries=7,
        retry_backoff="exponential",
        retry_delay=60,
        retry_backoff_max=3600,
        retry_jitter=True,
    )
    html = admin_client_.get(reverse("orchestrator:task-detail", args=[task.pk])).content.decode()
    assert "Up to 7 retries" in html
    assert "1 min, 2 min, 4 min, 8 min, 16 min, … (2 more)" in html
    assert "between half of it and all of it" in html


def test_detail_shows_channels_with_secrets_masked(
    task: ScheduledTask, admin_client_: Client
) -> None:
    hook = "https://hooks.slack.com/services/T000/B000/abcdefghijkl"
    slack = make_channel("alerts", kind="slack", target=hook)
    task.notification_channels.add(slack)
    html = admin_client_.get(reverse("orchestrator:task-detail", args=[task.pk])).content.decode()
    assert "alerts" in html
    assert hook not in html and "T000" not in html
    assert "https://hooks.slack.com/…ijkl" in html


def test_detail_falls_back_to_default_channels(task: ScheduledTask, admin_client_: Client) -> None:
    make_channel("ops-mail", is_default=True)
    make_channel("unused")
    html = admin_client_.get(reverse("orchestrator:task-detail", args=[task.pk])).content.decode()
    assert "alerts go to the default channels" in html
    assert "ops-mail" in html and "unused" not in html


def test_detail_links_to_the_admin(task: ScheduledTask, admin_client_: Client) -> None:
    html = admin_client_.get(reverse("orchestrator:task-detail", args=[task.pk])).content.decode()
    if admin.site.is_registered(ScheduledTask):
        assert reverse("admin:orchestrator_scheduledtask_change", args=[task.pk]) in html
        assert "Edit in admin" in html


def test_unknown_task_is_404(admin_client_: Client) -> None:
    assert admin_client_.get(reverse("orchestrator:task-detail", args=[999999])).status_code == 404


# --- query counts ------------------------------------------------------------------------------


def add_history(task: ScheduledTask, count: int) -> None:
    """``count`` runs over the last days, mixed outcomes, as one bulk insert."""
    now = timezone.now()
    statuses = ["succeeded"] * 8 + ["retried", "failed"]
    TaskRun.objects.bulk_create(
        (
            TaskRun(
                scheduled_task=task,
                status=statuses[i % len(statuses)],
                started_at=now - dt.timedelta(minutes=i),
                duration=dt.timedelta(milliseconds=200 + i % 700),
                error_type="RuntimeError" if statuses[i % len(statuses)] != "succeeded" else "",
            )
            for i in range(count)
        ),
        batch_size=2000,
    )
    rollups.rebuild([task.pk])  # bulk SQL writes around the aggregates


def count_queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


def test_query_counts_stay_flat_with_10000_runs_and_more_tasks() -> None:
    # A staff user with permissions (not a superuser), so permission lookups are counted too.
    user = make_user(
        "operator",
        "orchestrator.view_scheduledtask",
        "orchestrator.change_scheduledtask",
        "orchestrator.run_scheduledtask",
    )
    client = client_for(user)
    first = make_scheduled_task("busy", cron="* * * * *")
    add_history(first, 10_000)
    detail_url = reverse("orchestrator:task-detail", args=[first.pk])

    overview_one = count_queries(client, DASHBOARD)
    detail = count_queries(client, detail_url)
    detail_last_page = count_queries(client, detail_url + "?page=200")

    for n in range(10):
        other = make_scheduled_task(f"other-{n}", cron=f"{n} * * * *", queue=f"q{n % 3}")
        add_history(other, 50)
        other.notification_channels.add(make_channel(f"chan-{n}"))
    overview_many = count_queries(client, DASHBOARD)

    assert overview_one == overview_many
    # 14: the recent failures are one index walk per failure status (lost, failed), and the
    # tasks are counted for the overview's pages.
    assert overview_many <= 14, overview_many
    assert detail == detail_last_page
    assert detail <= 12, detail
    print(f"queries: overview {overview_many}, detail {detail}")  # shown with -s


# --- operator controls ------------------------------------------------------------------------


def detail(task: ScheduledTask) -> str:
    return reverse("orchestrator:task-detail", args=[task.pk])


def test_pausing_shows_the_reason_and_end_and_resuming_ends_it(
    admin_client_: Client, task: ScheduledTask
) -> None:
    until = (timezone.localtime() + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    response = admin_client_.post(
        reverse("orchestrator:task-pause", args=[task.pk]),
        {"reason": "deploy freeze", "until": until},
    )
    assert response.status_code == 302
    page = admin_client_.get(detail(task)).content.decode()
    assert "Paused: deploy freeze" in page and "resumes by itself at" in page
    overview = admin_client_.get(DASHBOARD + "?enabled=paused").content.decode()
    assert f'id="task-{task.pk}"' in overview and "deploy freeze" in overview
    admin_client_.post(reverse("orchestrator:task-resume", args=[task.pk]))
    task.refresh_from_db()
    assert task.paused is False
    after = admin_client_.get(DASHBOARD + "?enabled=paused").content.decode()
    assert f'id="task-{task.pk}"' not in after


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"reason": ""}, "This field is required."),
        ({"reason": "x", "until": "2020-01-01T10:00"}, "This time has passed"),
        ({"reason": "x", "until": "soon"}, "Enter a valid date/time."),
    ],
)
def test_a_bad_pause_shows_the_form_again_with_its_error(
    admin_client_: Client, task: ScheduledTask, body: dict, error: str
) -> None:
    response = admin_client_.post(reverse("orchestrator:task-pause", args=[task.pk]), body)
    assert response.status_code == 200  # the page again, as Django shows an invalid form
    assert error in response.content.decode()
    task.refresh_from_db()
    assert task.paused is False


def test_run_with_arguments_that_do_not_fit_shows_the_error_on_the_form(
    admin_client_: Client,
) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    response = admin_client_.post(
        reverse("orchestrator:task-run", args=[task.pk]), {"kwargs": '{"zzz": 1}'}
    )
    assert response.status_code == 200  # the page again, with the error on the form
    assert "Unknown argument(s) zzz" in response.content.decode()
    response = admin_client_.post(
        reverse("orchestrator:task-run", args=[task.pk]), {"kwargs": "{not json"}
    )
    assert (response.status_code, "Enter a valid JSON" in response.content.decode()) == (200, True)
    assert not TaskRun.objects.exists()


def test_run_with_arguments_sends_them(admin_client_: Client, sent: list) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    response = admin_client_.post(
        reverse("orchestrator:task-run", args=[task.pk]), {"kwargs": '{"a": 2}'}
    )
    assert response.status_code == 302
    assert sent == [(task.pk, "manual")]


def test_queued_and_running_runs_offer_cancel_to_those_who_may_run(
    task: ScheduledTask,
) -> None:
    queued = make_run(task, status=TaskRun.Status.QUEUED, celery_task_id="c1")
    done = make_run(task, status=TaskRun.Status.SUCCEEDED)
    cancel = reverse("orchestrator:run-cancel", args=[queued.pk])
    # Seeing the runs takes the permission to view them, as in the admin and the API.
    runner = client_for(
        make_user("runner", *VIEW, "orchestrator.view_taskrun", "orchestrator.run_scheduledtask")
    )
    page = runner.get(detail(task)).content.decode()
    assert cancel in page
    assert reverse("orchestrator:run-cancel", args=[done.pk]) not in page
    viewer = client_for(make_user("viewer", *VIEW, "orchestrator.view_taskrun"))
    assert cancel not in viewer.get(detail(task)).content.decode()
    with mock.patch("celery.current_app.control.revoke"):
        assert runner.post(cancel).status_code == 302
    queued.refresh_from_db()
    assert (queued.status, queued.note) == ("cancelled", "cancelled by runner")


def test_the_task_page_shows_its_change_history(admin_client_: Client, task: ScheduledTask):
    task.pause("a reason")
    page = admin_client_.get(detail(task)).content.decode()
    assert "Change history" in page and "pause_reason" in page and "shell" in page


# --- the scheduler's health ---------------------------------------------------------------------


def test_health_is_503_without_a_scheduler_and_200_with_a_fresh_heartbeat_and_pass() -> None:
    from orchestrator import watchdog
    from orchestrator.scheduler.lease import Lease, ensure_row

    health = reverse("orchestrator:health")
    anonymous = Client()
    response = anonymous.get(health)
    assert response.status_code == 503
    assert response.json() == {
        "status": "down",
        "scheduler": {"leader": None, "heartbeat_age_s": None},
        "watchdog": {"last_pass_age_s": None},
    }
    ensure_row()
    Lease("token", "beat-1:11", 10).step()
    watchdog.run_pass("worker-a")
    response = anonymous.get(health)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["status"], body["scheduler"]["leader"]) == ("ok", "beat-1:11")
    assert body["scheduler"]["heartbeat_age_s"] < 5 and body["watchdog"]["last_pass_age_s"] < 5
    assert response["Cache-Control"] == "no-store"


def test_the_overview_shows_the_scheduler_and_turns_red_when_it_is_stale(
    admin_client_: Client,
) -> None:
    from orchestrator.models import SchedulerLease
    from orchestrator.scheduler.lease import LEASE_NAME, Lease, ensure_row
    from orchestrator.scheduler.registry import ProcessRow

    ensure_row()
    Lease("token", "beat-1:11", 10).step()
    ProcessRow("token-b", "beat-2", 22).beat("standby")
    page = admin_client_.get(DASHBOARD).content.decode()
    assert 'class="scheduler-state"' in page and "beat-1:11 sends" in page
    assert "1 standby (beat-2:22)" in page
    SchedulerLease.objects.filter(name=LEASE_NAME).update(
        heartbeat_at=timezone.now() - dt.timedelta(minutes=5)
    )
    page = admin_client_.get(DASHBOARD).content.decode()
    assert 'class="scheduler-state stale"' in page and "Scheduler down" in page


def test_a_run_s_page_shows_its_log_escaped(task: ScheduledTask, admin_client_: Client) -> None:
    run = make_run(
        task,
        status="failed",
        error_type="ValueError",
        error_message="bad <input>",
        traceback="Traceback (most recent call last):\nValueError: bad <input>",
        log="INFO job: <b>reading</b> 3 files\nWARNING job: file 2 is empty\n",
    )
    page = admin_client_.get(reverse("orchestrator:run-detail", args=[run.pk])).content.decode()
    assert '<pre class="run-text run-log">INFO job: &lt;b&gt;reading&lt;/b&gt; 3 files\n' in page
    assert "WARNING job: file 2 is empty" in page
    assert "bad &lt;input&gt;" in page and "<b>reading</b>" not in page

    # The task page links each run to its page and does not read the logs itself.
    task_page = admin_client_.get(reverse("orchestrator:task-detail", args=[task.pk]))
    assert reverse("orchestrator:run-detail", args=[run.pk]) in task_page.content.decode()
    assert "reading" not in task_page.content.decode()


def test_a_run_without_a_log_says_so(task: ScheduledTask, admin_client_: Client) -> None:
    run = make_run(task, status="running")
    page = admin_client_.get(reverse("orchestrator:run-detail", args=[run.pk])).content.decode()
    assert "Nothing was logged or printed yet" in page


def test_a_run_s_page_needs_the_view_permission(task: ScheduledTask) -> None:
    run = make_run(task, status="succeeded", log="secret-ish output\n")
    page = reverse("orchestrator:run-detail", args=[run.pk])
    assert client_for(make_user("nobody")).get(page).status_code == 403
    assert client_for(None).get(page).status_code == 302
    # The run history's rule (orchestrator.access.can_view_runs), as in the API.
    assert client_for(make_user("tasks-only", *VIEW)).get(page).status_code == 403
    assert client_for(make_user("viewer", *VIEW, RUNS)).get(page).status_code == 200
    assert (
        client_for(make_user("viewer2", *VIEW, RUNS))
        .get(reverse("orchestrator:run-detail", args=[run.pk + 1000]))
        .status_code
        == 404
    )


def test_the_overview_lists_tasks_a_page_at_a_time_keeping_the_filters(
    admin_client_: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.dashboard import views

    monkeypatch.setattr(views, "TASKS_PER_PAGE", 2)
    for n in range(5):
        make_scheduled_task(f"t{n}", queue="slow")

    first = admin_client_.get(DASHBOARD, {"queue": "slow"})
    last = admin_client_.get(DASHBOARD, {"queue": "slow", "page": 3})

    assert [row["task"].name for row in first.context["rows"]] == ["t0", "t1"]
    assert [row["task"].name for row in last.context["rows"]] == ["t4"]
    assert "page 1 of 3 (5 tasks)" in first.content.decode()
    assert 'href="?queue=slow&amp;page=2"' in first.content.decode()
