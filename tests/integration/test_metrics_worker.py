"""/metrics after real runs: a prefork worker with two processes, Redis (or RabbitMQ) and
PostgreSQL. The counters are read from the database, so what two processes wrote at once must
add up exactly to the history."""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models import Count
from django.test import Client
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

import tests.celery_app  # noqa: F401  (makes the test project's app current for sending)
from orchestrator import rollups
from orchestrator.dispatcher import enqueue
from orchestrator.models import TaskRun, TaskRunRollup
from tests.integration.conftest import wait_until
from tests.utils import make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TOKEN = "integration-metrics-token-0123456789abcdef"


def settled(expected: int) -> bool:
    runs = TaskRun.objects.all()
    pending = runs.filter(status__in=(TaskRun.Status.QUEUED, TaskRun.Status.RUNNING))
    return runs.count() >= expected and not pending.exists()


def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get(
        reverse("orchestrator:metrics"), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_match_the_history_written_by_two_worker_processes(
    start_worker: Any, settings: Any
) -> None:
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "METRICS_TOKEN": TOKEN}
    ok = make_scheduled_task("ok", "tests.sample_tasks.add", kwargs={"a": 1, "b": 2})
    flaky = make_scheduled_task(
        'flaky "one"',
        "tests.sample_tasks.raises",
        kwargs={"kind": "ConnectionError"},
        max_retries=1,
        retry_backoff="fixed",
        retry_delay=1,
    )
    start_worker(concurrency=2)

    for _ in range(12):
        enqueue(ok)
    for _ in range(3):
        enqueue(flaky)
    wait_until(lambda: settled(12 + 3 * 2), timeout=90)

    found = scrape(Client())

    history = (
        TaskRun.objects.values("scheduled_task__name", "status").annotate(n=Count("id")).order_by()
    )
    expected = {(row["scheduled_task__name"], row["status"]): row["n"] for row in history}
    assert expected == {
        ("ok", "succeeded"): 12,
        ('flaky "one"', "retried"): 3,
        ('flaky "one"', "failed"): 3,
    }
    for (task, status), count in expected.items():
        key = ("orchestrator_runs_total", (("status", status), ("task", task)))
        assert found[key] == count, key
    assert found[("orchestrator_run_duration_seconds_count", (("task", "ok"),))] == 12
    assert found[("orchestrator_run_duration_seconds_count", (("task", 'flaky "one"'),))] == 6
    assert ("orchestrator_last_success_timestamp_seconds", (("task", "ok"),)) in found
    # The aggregate rows themselves equal a count of the history, hour by hour.
    stored = {
        (row.scheduled_task_id, row.status, row.hour): row.runs
        for row in TaskRunRollup.objects.all()
    }
    counted: dict[tuple[int, str, Any], int] = {}
    for run in TaskRun.objects.all():
        key = (run.scheduled_task_id, run.status, rollups.hour_of(run.started_at))
        counted[key] = counted.get(key, 0) + 1
    assert stored == counted
