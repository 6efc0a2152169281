"""GET <dashboard>/metrics: who may read it, what it says, and what a scrape costs."""

from __future__ import annotations

import datetime as dt
from typing import Any
from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from freezegun import freeze_time
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import metrics
from orchestrator.dispatcher import Attempt, run_task
from orchestrator.models import ScheduledTask, TaskRun
from tests.utils import make_channel, make_scheduled_task, make_user

pytestmark = pytest.mark.django_db

TOKEN = "a-long-random-metrics-token-0123456789"
URL = "/ops/metrics"


@pytest.fixture
def url() -> str:
    return reverse("orchestrator:metrics")


@pytest.fixture
def token(settings: Any) -> str:
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "METRICS_TOKEN": TOKEN}
    return TOKEN


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by name and sorted labels (parsed by prometheus_client)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# --- access -------------------------------------------------------------------------------------


def test_anonymous_gets_401_with_the_scheme_to_use(client: Any, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_staff_user_with_view_taskrun_reads_them(client: Any, url: str) -> None:
    client.force_login(make_user("ops", "orchestrator.view_taskrun", is_staff=True))
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert b"orchestrator_tasks" in response.content


def test_the_metrics_follow_the_run_history_rule(client: Any, url: str) -> None:
    # orchestrator.access.can_view_runs: the change permission includes the view one, as in
    # the admin, the run pages and the API.
    client.force_login(make_user("editor", "orchestrator.change_taskrun", is_staff=True))
    assert client.get(url).status_code == 200


@pytest.mark.parametrize(
    ("perms", "is_staff"),
    [((), True), (("orchestrator.view_taskrun",), False)],
    ids=["staff-without-permission", "permission-without-staff"],
)
def test_other_users_get_403(client: Any, url: str, perms: tuple[str, ...], is_staff: bool) -> None:
    client.force_login(make_user("someone", *perms, is_staff=is_staff))
    assert client.get(url).status_code == 403


def test_the_right_bearer_token_reads_them(client: Any, url: str, token: str) -> None:
    response = client.get(url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "header",
    [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}", TOKEN],
    ids=["longer", "shorter", "empty", "basic", "no-scheme"],
)
def test_a_wrong_token_gets_403(client: Any, url: str, token: str, header: str) -> None:
    assert client.get(url, headers={"Authorization": header}).status_code == 403


def test_no_token_works_while_none_is_configured(client: Any, url: str) -> None:
    assert client.get(url, headers={"Authorization": "Bearer "}).status_code == 403
    assert client.get(url, headers={"Authorization": "Bearer anything"}).status_code == 403


def test_only_get_and_head(client: Any, url: str, token: str) -> None:
    response = client.post(url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 405


# --- what they say ------------------------------------------------------------------------------


def test_counts_durations_last_success_and_lag_come_from_the_history(
    client: Any, url: str, token: str
) -> None:
    ok = make_scheduled_task("ok", "tests.sample_tasks.add", kwargs={"a": 1, "b": 2})
    flaky = make_scheduled_task("flaky", "tests.sample_tasks.always_fails", max_retries=1)
    make_scheduled_task("off", "tests.sample_tasks.noop", enabled=False)
    make_scheduled_task("held", "tests.sample_tasks.noop", paused=True, pause_reason="maintenance")
    tick = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    with freeze_time(tick + dt.timedelta(seconds=3)):
        run_task(Attempt(ok.pk, scheduled_for=tick, celery_task_id="a"))
        run_task(Attempt(ok.pk, trigger="manual"))
        run_task(Attempt(flaky.pk, number=1, celery_task_id="f"))
        run_task(Attempt(flaky.pk, number=2, celery_task_id="f"))

    found = samples(client.get(url, headers={"Authorization": f"Bearer {token}"}).text)

    assert found[("orchestrator_runs_total", (("status", "succeeded"), ("task", "ok")))] == 2
    assert found[("orchestrator_runs_total", (("status", "retried"), ("task", "flaky")))] == 1
    assert found[("orchestrator_runs_total", (("status", "failed"), ("task", "flaky")))] == 1
    histogram = "orchestrator_run_duration_seconds"
    assert found[(f"{histogram}_count", (("task", "flaky"),))] == 2
    assert found[(f"{histogram}_bucket", (("le", "0.1"), ("task", "ok")))] == 2
    assert found[(f"{histogram}_bucket", (("le", "+Inf"), ("task", "ok")))] == 2
    assert found[(f"{histogram}_sum", (("task", "ok"),))] == 0.0  # the clock stood still
    last_success = (tick + dt.timedelta(seconds=3)).timestamp()
    assert found[("orchestrator_last_success_timestamp_seconds", (("task", "ok"),))] == (
        last_success
    )
    assert ("orchestrator_last_success_timestamp_seconds", (("task", "flaky"),)) not in found
    assert found[("orchestrator_schedule_lag_seconds", (("task", "ok"),))] == 3.0
    assert found[("orchestrator_task_period_seconds", (("task", "ok"),))] == 60.0
    for quiet in ("off", "held"):  # not expected to run: left out of the period
        assert ("orchestrator_task_period_seconds", (("task", quiet),)) not in found
    assert found[("orchestrator_missed_runs_total", (("task", "ok"),))] == 0
    assert found[("orchestrator_tasks", (("state", "enabled"),))] == 2
    assert found[("orchestrator_tasks", (("state", "disabled"),))] == 1
    assert found[("orchestrator_tasks", (("state", "paused"),))] == 1
    assert found[("orchestrator_scheduler_heartbeat_age_seconds", ())] == float("inf")


def test_alerts_are_counted_by_channel_event_and_result(client: Any, url: str, token: str) -> None:
    channel = make_channel('ops "night"', cooldown=3600)
    task = make_scheduled_task("flaky", "tests.sample_tasks.always_fails", max_retries=0)
    task.notification_channels.add(channel)
    with mock.patch("orchestrator.notifications.delivery.send_task_message"):
        run_task(Attempt(task.pk))
        run_task(Attempt(task.pk))

    found = samples(client.get(url, headers={"Authorization": f"Bearer {token}"}).text)

    labels = (("channel", 'ops "night"'), ("event", "failure"), ("result", "suppressed"))
    assert found[("orchestrator_alerts_total", labels)] == 1


def test_label_values_with_quotes_backslashes_and_newlines_survive(
    client: Any, url: str, token: str
) -> None:
    task = make_scheduled_task("plain", "tests.sample_tasks.add", kwargs={"a": 1, "b": 2})
    awkward = 'say "hi"\\now\nnext line'
    ScheduledTask.objects.filter(pk=task.pk).update(name=awkward)
    run_task(Attempt(task.pk))

    text = client.get(url, headers={"Authorization": f"Bearer {token}"}).text

    assert 'task="say \\"hi\\"\\\\now\\nnext line"' in text  # escaped, on one line
    found = samples(text)
    assert found[("orchestrator_runs_total", (("status", "succeeded"), ("task", awkward)))] == 1


def test_deleted_runs_stay_counted(client: Any, url: str, token: str) -> None:
    from orchestrator import rollups

    task = make_scheduled_task("ok", "tests.sample_tasks.add", kwargs={"a": 1, "b": 2})
    for _ in range(3):
        run_task(Attempt(task.pk))
    rollups.forget_runs(TaskRun.objects.all())
    TaskRun.objects.all().delete()

    found = samples(client.get(url, headers={"Authorization": f"Bearer {token}"}).text)

    # A Prometheus counter must never go down: pruning the history does not lower it.
    assert found[("orchestrator_runs_total", (("status", "succeeded"), ("task", "ok")))] == 3


@pytest.mark.parametrize("tasks", [5, 50])
def test_a_scrape_costs_the_same_queries_whatever_the_number_of_tasks(
    tasks: int, client: Any, url: str, token: str
) -> None:
    channel = make_channel("ops", cooldown=0)
    for number in range(tasks):
        task = make_scheduled_task(f"task-{number}", "tests.sample_tasks.add", kwargs={"a": 1})
        task.notification_channels.add(channel)
        run_task(Attempt(task.pk, scheduled_for=timezone.now(), celery_task_id=f"c{number}"))

    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert len(queries.captured_queries) == metrics.QUERIES_PER_SCRAPE
    assert response.text.count("orchestrator_runs_total{") == tasks
