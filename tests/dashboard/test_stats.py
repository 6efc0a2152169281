"""The dashboard's queries: fixed statement counts, and the figures they compute."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from orchestrator.dashboard import stats
from orchestrator.models import TaskRun
from tests.utils import make_definition, make_run, make_scheduled_task

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def ago(**delta: Any) -> dt.datetime:
    return NOW - dt.timedelta(**delta)


def test_success_rates_count_outcomes_of_the_last_seven_days() -> None:
    task = make_scheduled_task("a")
    for status in ["succeeded", "succeeded", "failed", "lost", "retried", "skipped", "running"]:
        make_run(task, status=status, started_at=ago(days=1))
    make_run(task, status="failed", started_at=ago(days=8))  # outside the window

    rate = stats.task_success_rate(task, now=NOW)

    assert (rate.succeeded, rate.outcomes, rate.percent) == (2, 4, 50)
    assert stats.SuccessRate(0, 0).percent is None


def test_recent_runs_are_the_last_n_per_task_oldest_first(django_assert_num_queries: Any) -> None:
    a, b = make_scheduled_task("a"), make_scheduled_task("b")
    for minutes in range(5):
        make_run(a, started_at=ago(minutes=minutes), duration=dt.timedelta(seconds=minutes))
    make_run(b, status="failed", started_at=ago(hours=1))

    with django_assert_num_queries(1):
        points = stats.recent_runs([a.pk, b.pk], per_task=3, now=NOW)

    assert [p.duration for p in points[a.pk]] == [2.0, 1.0, 0.0]
    assert [p.status for p in points[b.pk]] == ["failed"]


def test_the_overview_filters_by_last_run_status_and_state() -> None:
    failing = make_scheduled_task("failing")
    make_run(failing, status="failed", started_at=timezone.now())
    never = make_scheduled_task("never")
    make_scheduled_task("off", enabled=False)

    def names(**filters: str) -> list[str]:
        return [t.name for t in stats.overview_tasks(stats.Filters(**filters))]

    assert names(status="failed") == ["failing"]
    assert names(status=stats.NEVER_RUN) == ["never", "off"]
    assert names(enabled="no") == ["off"]
    assert never.name in names(enabled="yes")


def test_filter_choices_name_the_default_queue() -> None:
    make_scheduled_task("a", definition=make_definition("d", category="billing"))
    make_scheduled_task("b", queue="urgent")
    choices = stats.filter_choices()
    assert choices == {"categories": ["billing"], "queues": ["celery", "urgent"]}


def test_recent_failures_are_final_ones_only() -> None:
    task = make_scheduled_task("a")
    make_run(task, status="retried", started_at=ago(minutes=3))
    failed = make_run(task, status="failed", started_at=ago(minutes=2))
    lost = make_run(task, status="lost", started_at=ago(minutes=1))
    assert list(stats.recent_failures(stats.overview_tasks())) == [lost, failed]


def test_the_task_chart_has_the_last_runs_oldest_first() -> None:
    task = make_scheduled_task("a")
    for minutes in range(4):
        make_run(task, started_at=ago(minutes=minutes))
    points = stats.task_history_points(task, limit=3)
    assert [p.started_at for p in points] == sorted(p.started_at for p in points)
    assert len(points) == 3
    assert TaskRun.objects.count() == 4
