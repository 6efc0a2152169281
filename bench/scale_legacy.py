"""The baseline of the scale benchmark: the history-scanning queries of the pages as they were
before the per-task aggregates, copied from ``orchestrator/dashboard/stats.py``, the dashboard's
views and the admin's querysets of that time.

Each ``*_queries`` function runs (and fully reads) the SQL one page ran against the run history,
and nothing else: no template, no permission checks. Timed on the same data as the pages of
today's code, it is "today's number" that the benchmark sets the new one beside. It reads the
models only, so it keeps working whatever the dashboard and the admin read now.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

from django.db.models import Count, F, Max, Min, OuterRef, Q, QuerySet, Subquery, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

RATE_WINDOW = dt.timedelta(days=7)
SPARKLINE_RUNS = 30
TASK_PAGE_RUNS = 50
TASK_CHART_RUNS = 100
ADMIN_PAGE = 100
API_PAGE = 50


def _models() -> tuple[Any, Any]:
    from orchestrator.models import ScheduledTask, TaskRun

    return ScheduledTask, TaskRun


def _last_run() -> QuerySet[Any]:
    _, TaskRun = _models()
    return TaskRun.objects.filter(scheduled_task=OuterRef("pk")).order_by("-started_at", "-id")


def overview_tasks(status: str = "") -> QuerySet[Any]:
    """Tasks with their last run's status and start: two correlated subqueries per task."""
    ScheduledTask, _ = _models()
    tasks = ScheduledTask.objects.select_related("task_definition").annotate(
        last_run_status=Subquery(_last_run().values("status")[:1]),
        last_run_at=Subquery(_last_run().values("started_at")[:1]),
    )
    if status:
        tasks = tasks.filter(last_run_status=status)
    return tasks.order_by("name")


def success_rates(task_ids: Iterable[int], now: dt.datetime) -> list[dict[str, Any]]:
    """Outcomes of the last seven days per task: a grouped scan of a week of history."""
    _, TaskRun = _models()
    return list(
        TaskRun.objects.filter(
            scheduled_task__in=list(task_ids),
            started_at__gte=now - RATE_WINDOW,
            status__in=TaskRun.OUTCOME_STATUSES,
        )
        .values("scheduled_task")
        .annotate(
            outcomes=Count("id"), succeeded=Count("id", filter=Q(status=TaskRun.Status.SUCCEEDED))
        )
        .order_by()
    )


def recent_runs(task_ids: Iterable[int], now: dt.datetime) -> list[dict[str, Any]]:
    """The last 30 runs of each task in the week: a window function over a week of history."""
    _, TaskRun = _models()
    return list(
        TaskRun.objects.filter(scheduled_task__in=list(task_ids), started_at__gte=now - RATE_WINDOW)
        .annotate(
            position=Window(
                RowNumber(),
                partition_by=[F("scheduled_task")],
                order_by=[F("started_at").desc(), F("id").desc()],
            )
        )
        .filter(position__lte=SPARKLINE_RUNS)
        .values("scheduled_task", "status", "started_at", "duration")
        .order_by()
    )


def recent_failures(tasks: QuerySet[Any], limit: int = 15) -> list[Any]:
    _, TaskRun = _models()
    return list(
        TaskRun.objects.filter(
            status__in=TaskRun.FINAL_FAILURE_STATUSES, scheduled_task__in=tasks.values("pk")
        )
        .select_related("scheduled_task")
        .only(
            "id",
            "status",
            "attempt",
            "max_attempts",
            "started_at",
            "error_type",
            "error_message",
            "scheduled_task__id",
            "scheduled_task__name",
        )
        .order_by("-started_at", "-id")[:limit]
    )


def overview_queries(status: str = "") -> int:
    """The dashboard overview's history queries; returns the number of tasks listed."""
    now = timezone.now()
    tasks = list(overview_tasks(status))
    ids = [task.pk for task in tasks]
    success_rates(ids, now)
    recent_runs(ids, now)
    recent_failures(overview_tasks(status))
    return len(tasks)


def task_page_queries(task_id: int) -> int:
    """The task page's: its 7-day rate, its last 100 runs for the chart, the run count of its
    paginator and the first page of 50 runs."""
    _, TaskRun = _models()
    now = timezone.now()
    success_rates([task_id], now)
    list(
        TaskRun.objects.filter(scheduled_task_id=task_id)
        .order_by("-started_at", "-id")
        .values("status", "started_at", "duration")[:TASK_CHART_RUNS]
    )
    runs = TaskRun.objects.filter(scheduled_task_id=task_id).order_by("-started_at", "-id")
    count = runs.count()
    list(runs.select_related("triggered_by")[:TASK_PAGE_RUNS])
    return int(count)


def admin_run_list_queries() -> int:
    """The admin run list's: the paginator's exact count of the whole history, the first page
    of 100 runs with their tasks, and the date hierarchy's scans."""
    _, TaskRun = _models()
    runs = TaskRun.objects.order_by("-started_at", "-id")
    count = runs.count()
    list(runs.select_related("scheduled_task")[:ADMIN_PAGE])
    # The date hierarchy: the history's first and last start, then the months (or the years)
    # that hold runs, as Django's admin asks for them.
    bounds = TaskRun.objects.aggregate(first=Min("started_at"), last=Max("started_at"))
    if bounds["first"] is not None:
        if bounds["first"].year == bounds["last"].year:
            runs_that_year = TaskRun.objects.filter(started_at__year=bounds["first"].year)
            list(runs_that_year.dates("started_at", "month"))
        else:
            list(TaskRun.objects.dates("started_at", "year"))
    return int(count)


def admin_task_list_queries() -> int:
    """The admin scheduled task list's: its count and the first page of 100 tasks, each with
    its last run's status and start (two correlated subqueries)."""
    tasks = overview_tasks()
    count = tasks.count()
    list(tasks[:ADMIN_PAGE])
    return int(count)


def api_run_list_queries() -> int:
    """The API's first page of runs (cursor pagination: no count)."""
    _, TaskRun = _models()
    return len(list(TaskRun.objects.order_by("-started_at", "-id")[: API_PAGE + 1]))


def baselines(task_id: int) -> dict[str, Callable[[], int]]:
    """Page name -> its baseline, in the benchmark's order."""
    return {
        "dashboard overview": overview_queries,
        "dashboard overview, last run failed": lambda: overview_queries("failed"),
        "dashboard task page": lambda: task_page_queries(task_id),
        "admin run list": admin_run_list_queries,
        "admin scheduled task list": admin_task_list_queries,
        "API runs list": api_run_list_queries,
    }
