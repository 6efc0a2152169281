"""Queries behind the dashboard, each a fixed number of SQL statements whatever the task count.

The run history grows without bound (a thousand tasks every five minutes write 8.6 million rows
a month), so nothing here reads more of it than the page shows: success rates come from the
per-task hourly aggregates (:mod:`orchestrator.rollups`), the last run of each task and the
recent failures are index seeks (``LIMIT`` on the (scheduled_task, -started_at) and (status,
-started_at) indexes), and the sparklines read each task's last runs through the same index
(a ``LATERAL`` join on PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from django.db import connections
from django.db.models import F, OuterRef, Q, QuerySet, Subquery, Sum, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from orchestrator import rollups
from orchestrator.charts import RunPoint
from orchestrator.models import ScheduledTask, TaskRun, TaskRunRollup

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

Status = TaskRun.Status

# The success rate counts outcomes, not attempts: a run that failed and then succeeded on retry
# is one success (its "retried" attempt is left out), skipped runs did not run at all, and running
# ones have no outcome yet.
OUTCOME_STATUSES = TaskRun.OUTCOME_STATUSES
FAILURE_STATUSES = TaskRun.FINAL_FAILURE_STATUSES
RATE_WINDOW = dt.timedelta(days=7)
SPARKLINE_RUNS = 30
NEVER_RUN = "never"


@dataclass(frozen=True)
class SuccessRate:
    succeeded: int
    outcomes: int

    @property
    def percent(self) -> int | None:
        if not self.outcomes:
            return None
        return round(100 * self.succeeded / self.outcomes)


@dataclass(frozen=True)
class Filters:
    """The overview's filters; empty strings mean "any"."""

    category: str = ""
    queue: str = ""
    status: str = ""  # a TaskRun status of the last run, or NEVER_RUN
    enabled: str = ""  # "yes", "no" or "paused"

    @property
    def active(self) -> bool:
        return any((self.category, self.queue, self.status, self.enabled))


def _last_run() -> QuerySet[TaskRun]:
    return TaskRun.objects.filter(scheduled_task=OuterRef("pk")).order_by("-started_at", "-id")


class LastRun(TypedDict):
    """What overview_tasks() annotates each task with."""

    last_run_status: str | None
    last_run_at: dt.datetime | None


def overview_tasks(
    filters: Filters | None = None,
) -> QuerySet[WithAnnotations[ScheduledTask, LastRun]]:
    """Scheduled tasks with their definition and their last run's status and start, filtered."""
    filters = filters or Filters()
    tasks = ScheduledTask.objects.select_related("task_definition").annotate(
        last_run_status=Subquery(_last_run().values("status")[:1]),
        last_run_at=Subquery(_last_run().values("started_at")[:1]),
    )
    if filters.category:
        tasks = tasks.filter(task_definition__category=filters.category)
    if filters.queue:
        # Blank queue means Celery's default queue; the filter offers it under its real name.
        tasks = tasks.filter(queue="" if filters.queue == default_queue() else filters.queue)
    if filters.status == NEVER_RUN:
        tasks = tasks.filter(last_run_status__isnull=True)
    elif filters.status:
        tasks = tasks.filter(last_run_status=filters.status)
    if filters.enabled == "yes":
        tasks = tasks.filter(enabled=True, task_definition__enabled=True)
    elif filters.enabled == "no":
        tasks = tasks.filter(Q(enabled=False) | Q(task_definition__enabled=False))
    elif filters.enabled == "paused":
        # A pause whose end has passed counts as over, as the dispatcher sees it.
        tasks = tasks.filter(paused=True).filter(
            Q(paused_until__isnull=True) | Q(paused_until__gt=timezone.now())
        )
    return tasks.order_by("name")


def default_queue() -> str:
    from django.conf import settings

    return str(getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "") or "celery")


def success_rates(
    task_ids: Iterable[int], *, now: dt.datetime | None = None
) -> dict[int, SuccessRate]:
    """Outcomes of the last seven days (to the hour) per task, in one grouped query over the
    hourly aggregates: at most 168 rows per task and outcome, whatever the history holds."""
    since = rollups.hour_of((now or timezone.now()) - RATE_WINDOW)
    rows = (
        TaskRunRollup.objects.filter(
            scheduled_task__in=list(task_ids),
            hour__gte=since,
            status__in=OUTCOME_STATUSES,
        )
        .values("scheduled_task")
        .annotate(outcomes=Sum("runs"), succeeded=Sum("runs", filter=Q(status=Status.SUCCEEDED)))
        .order_by()
    )
    return {
        row["scheduled_task"]: SuccessRate(int(row["succeeded"] or 0), int(row["outcomes"] or 0))
        for row in rows
    }


def recent_runs(
    task_ids: Iterable[int], *, per_task: int = SPARKLINE_RUNS, now: dt.datetime | None = None
) -> dict[int, list[RunPoint]]:
    """The last ``per_task`` runs of each task within the rate window, oldest first.

    One query. On PostgreSQL a ``LATERAL`` join reads each task's newest ``per_task`` runs
    from the (scheduled_task, -started_at) index and nothing more. Elsewhere a window function
    numbers each task's runs of the last seven days from the newest and only the first
    ``per_task`` come back.
    """
    since = (now or timezone.now()) - RATE_WINDOW
    ids = list(task_ids)
    alias = TaskRun.objects.db
    if connections[alias].vendor == "postgresql":
        return _points_by_task(_latest_runs_lateral(ids, since, per_task, alias))
    rows = (
        TaskRun.objects.filter(scheduled_task__in=ids, started_at__gte=since)
        .annotate(
            position=Window(
                RowNumber(),
                partition_by=[F("scheduled_task")],
                order_by=[F("started_at").desc(), F("id").desc()],
            )
        )
        .filter(position__lte=per_task)
        .values("scheduled_task", "status", "started_at", "duration")
        .order_by()
    )
    return _points_by_task(rows)


def _latest_runs_lateral(
    task_ids: list[int], since: dt.datetime, per_task: int, alias: str
) -> list[dict[str, Any]]:
    connection = connections[alias]
    table = connection.ops.quote_name(TaskRun._meta.db_table)
    sql = (
        "SELECT r.scheduled_task_id, r.status, r.started_at, r.duration "
        "FROM unnest(%s::bigint[]) AS t(id) CROSS JOIN LATERAL ("
        f"SELECT scheduled_task_id, status, started_at, duration FROM {table} "
        "WHERE scheduled_task_id = t.id AND started_at >= %s "
        "ORDER BY started_at DESC, id DESC LIMIT %s) AS r"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [task_ids, since, per_task])
        return [
            {"scheduled_task": task, "status": status, "started_at": start, "duration": duration}
            for task, status, start, duration in cursor.fetchall()
        ]


def _points_by_task(rows: Iterable[Mapping[str, Any]]) -> dict[int, list[RunPoint]]:
    labels = dict(Status.choices)
    points: dict[int, list[RunPoint]] = defaultdict(list)
    for row in rows:
        points[row["scheduled_task"]].append(run_point(row, labels))
    for task_points in points.values():
        task_points.sort(key=lambda point: point.started_at)
    return points


def run_point(row: Mapping[str, Any], labels: dict[str, str] | None = None) -> RunPoint:
    labels = labels if labels is not None else dict(Status.choices)
    duration = row["duration"]
    return RunPoint(
        status=row["status"],
        started_at=timezone.localtime(row["started_at"]),
        duration=duration.total_seconds() if duration is not None else None,
        label=labels.get(row["status"], row["status"]),
    )


def recent_failures(tasks: QuerySet[ScheduledTask], *, limit: int = 15) -> list[TaskRun]:
    """The latest final failures of ``tasks`` (retry attempts stay in each task's history).

    One query per failure status, each a walk down the (status, -started_at) index that stops
    at ``limit`` rows (an ``IN`` over both statuses would sort every failure ever recorded).
    """
    found = [
        run for status in FAILURE_STATUSES for run in _latest_with_status(tasks, status, limit)
    ]
    found.sort(key=lambda run: (run.started_at, run.pk), reverse=True)
    return found[:limit]


def _latest_with_status(
    tasks: QuerySet[ScheduledTask], status: str, limit: int
) -> QuerySet[TaskRun]:
    return (
        TaskRun.objects.filter(status=status, scheduled_task__in=tasks.values("pk"))
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


def filter_choices() -> dict[str, list[str]]:
    """Values the overview's filters offer: categories and queues in use (two queries)."""
    from orchestrator.models import TaskDefinition

    categories = (
        TaskDefinition.objects.exclude(category="")
        .order_by("category")
        .values_list("category", flat=True)
        .distinct()
    )
    queues = set(ScheduledTask.objects.order_by().values_list("queue", flat=True).distinct())
    named = {queue or default_queue() for queue in queues}
    return {"categories": list(categories), "queues": sorted(named)}


def task_history_points(task: ScheduledTask, *, limit: int = 100) -> list[RunPoint]:
    """The last ``limit`` runs of one task for its detail chart, oldest first (one query)."""
    rows = list(
        TaskRun.objects.filter(scheduled_task=task)
        .order_by("-started_at", "-id")
        .values("status", "started_at", "duration")[:limit]
    )
    labels = dict(Status.choices)
    return [run_point(row, labels) for row in reversed(rows)]


def task_success_rate(task: ScheduledTask, *, now: dt.datetime | None = None) -> SuccessRate:
    return success_rates([task.pk], now=now).get(task.pk, SuccessRate(0, 0))
