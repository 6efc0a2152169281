"""Prometheus metrics, read from the database at each scrape (``docs/metrics.md``).

:class:`OrchestratorCollector` is a ``prometheus_client`` collector that builds every family from
the database when the registry is collected: the per-task aggregates
(:mod:`orchestrator.rollups`), the counts of retired runs (deleted, or a cancelled retry) and
of alerts, the tasks and the scheduler's lease. Nothing is kept in a process's memory, so the
numbers are the same whichever web process answers, however many workers on however many hosts
ran the tasks. A scrape costs a fixed number of queries (:data:`QUERIES_PER_SCRAPE`) whatever
the number of tasks or runs. :func:`exposition` renders the text format for the view.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from django.db.models import DurationField, ExpressionWrapper, F, Max, OuterRef, Subquery, Sum
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orchestrator import cron, rollups
from orchestrator.models import (
    DURATION_BUCKETS,
    AlertCount,
    RetiredRunCount,
    ScheduledTask,
    TaskRun,
    TaskRunRollup,
)
from orchestrator.scheduler.status import scheduler_status

# The tasks (with their last lag), the aggregates, the retired-run counts, the alert counts,
# and the scheduler's lease and standbys.
QUERIES_PER_SCRAPE = 6
CONTENT_TYPE = CONTENT_TYPE_LATEST

Now = Callable[[], dt.datetime]
Totals = dict[tuple[int, str], dict[str, Any]]


def _totals() -> Totals:
    """Per (task, status): the counters summed over every hour, plus the retired runs'."""
    sums = {name: Sum(name) for name in rollups.COUNTER_COLUMNS}
    totals: Totals = {}
    for model in (TaskRunRollup, RetiredRunCount):
        rows: Any = (
            model._default_manager.values("scheduled_task_id", "status")
            .annotate(**{f"sum_{k}": v for k, v in sums.items()}, latest=Max("last_started_at"))
            .order_by()
        )
        for row in rows:
            key = (row["scheduled_task_id"], row["status"])
            total = totals.setdefault(key, dict.fromkeys(rollups.COUNTER_COLUMNS, 0))
            for name in rollups.COUNTER_COLUMNS:
                total[name] += int(row[f"sum_{name}"] or 0)
            latest = row["latest"]
            if latest is not None and (total.get("latest") is None or latest > total["latest"]):
                total["latest"] = latest
    return totals


def _tasks() -> list[dict[str, Any]]:
    """Every scheduled task with what the gauges need, and the lag of its last scheduled run
    (start minus tick of the latest first attempt that has a tick; missed rows excluded)."""
    last_scheduled = (
        TaskRun.objects.filter(
            scheduled_task=OuterRef("pk"), attempt=1, scheduled_for__isnull=False
        )
        .exclude(status__in=(TaskRun.Status.MISSED, TaskRun.Status.QUEUED))
        .order_by("-started_at", "-id")
        .annotate(
            lag=ExpressionWrapper(
                F("started_at") - F("scheduled_for"), output_field=DurationField()
            )
        )
        .values("lag")[:1]
    )
    query: Any = (
        ScheduledTask.objects.annotate(
            last_lag=Subquery(last_scheduled, output_field=DurationField())
        )
        .values(
            "pk",
            "name",
            "cron",
            "timezone",
            "enabled",
            "paused",
            "paused_until",
            "task_definition__enabled",
            "last_lag",
        )
        .order_by("name")
    )
    tasks: list[dict[str, Any]] = list(query)
    return tasks


def period_seconds(expression: str, zone: str, at: dt.datetime) -> float | None:
    """Seconds between the next two ticks of a cron schedule after ``at`` (None if unknown)."""
    try:
        first = cron.next_run(expression, zone, at)
        second = cron.next_run(expression, zone, first) if first is not None else None
    except (cron.CronError, ValueError, KeyError):
        return None
    if first is None or second is None:
        return None
    return (second - first).total_seconds()


def task_state(task: dict[str, Any], at: dt.datetime) -> str:
    """``disabled`` (the task or its definition), ``paused`` (a pause in force), or
    ``enabled``: each task is in exactly one."""
    if not (task["enabled"] and task["task_definition__enabled"]):
        return "disabled"
    if task["paused"] and (task["paused_until"] is None or at < task["paused_until"]):
        return "paused"
    return "enabled"


class OrchestratorCollector(Collector):
    """Every orchestrator metric, read from the database on each ``collect()``."""

    def __init__(self, now: Now = timezone.now) -> None:
        self.now = now

    def collect(self) -> Iterator[Metric]:
        at = self.now()
        tasks = _tasks()
        names = {task["pk"]: task["name"] for task in tasks}
        totals = _totals()
        yield from self._runs(names, totals)
        yield from self._tasks(tasks, totals, at)
        yield self._alerts()
        yield self._heartbeat()

    def _runs(self, names: dict[int, str], totals: Totals) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "orchestrator_runs",
            "Runs that reached a final status, by task and status (deleted runs included).",
            labels=["task", "status"],
        )
        missed = CounterMetricFamily(
            "orchestrator_missed_runs",
            "Schedule ticks that had no run within their grace period, by task.",
            labels=["task"],
        )
        durations = HistogramMetricFamily(
            "orchestrator_run_duration_seconds",
            "How long attempts ran (succeeded, retried and failed ones), by task.",
            labels=["task"],
        )
        timed: dict[int, dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(rollups.COUNTER_COLUMNS, 0)
        )
        missed_ticks: dict[int, int] = dict.fromkeys(names, 0)
        for (task_id, status), total in sorted(totals.items()):
            name = names.get(task_id)
            if name is None:
                continue
            runs.add_metric([name, status], total["runs"])
            if status == TaskRun.Status.MISSED:
                missed_ticks[task_id] += total["ticks"]
            if status in rollups.TIMED_STATUSES:
                for column in rollups.COUNTER_COLUMNS:
                    timed[task_id][column] += total[column]
        for task_id, name in names.items():
            missed.add_metric([name], missed_ticks[task_id])
            counters = timed[task_id]
            buckets = [(repr(float(bound)), counters[column]) for column, bound in DURATION_BUCKETS]
            buckets.append(("+Inf", counters["timed"]))
            durations.add_metric(
                [name], buckets=buckets, sum_value=counters["duration_us"] / 1_000_000
            )
        yield runs
        yield missed
        yield durations

    def _tasks(
        self, tasks: list[dict[str, Any]], totals: Totals, at: dt.datetime
    ) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "orchestrator_tasks",
            "Scheduled tasks by state: enabled, disabled (the task or its definition), paused.",
            labels=["state"],
        )
        last_success = GaugeMetricFamily(
            "orchestrator_last_success_timestamp_seconds",
            "Start time (Unix seconds) of the task's latest successful run; absent if none.",
            labels=["task"],
        )
        lag = GaugeMetricFamily(
            "orchestrator_schedule_lag_seconds",
            "Start minus schedule tick of the task's latest first attempt sent for a tick.",
            labels=["task"],
        )
        period = GaugeMetricFamily(
            "orchestrator_task_period_seconds",
            "Seconds between the next two schedule ticks of an enabled, unpaused task.",
            labels=["task"],
        )
        counts = dict.fromkeys(("enabled", "disabled", "paused"), 0)
        for task in tasks:
            state = task_state(task, at)
            counts[state] += 1
            success = totals.get((task["pk"], TaskRun.Status.SUCCEEDED), {}).get("latest")
            if success is not None:
                last_success.add_metric([task["name"]], success.timestamp())
            if task["last_lag"] is not None:
                lag.add_metric([task["name"]], task["last_lag"].total_seconds())
            # Only for tasks expected to run: alert rules on it then skip disabled and paused ones.
            seconds = period_seconds(task["cron"], task["timezone"], at)
            if seconds is not None and state == "enabled":
                period.add_metric([task["name"]], seconds)
        for state, count in counts.items():
            states.add_metric([state], count)
        yield states
        yield last_success
        yield lag
        yield period

    def _alerts(self) -> Metric:
        alerts = CounterMetricFamily(
            "orchestrator_alerts",
            "Alerts by channel, event and result (sent, suppressed, failed).",
            labels=["channel", "event", "result"],
        )
        rows = AlertCount.objects.values_list("channel__name", "event", "result", "count")
        for channel, event, result, count in rows.order_by("channel__name", "event", "result"):
            alerts.add_metric([channel, event, result], count)
        return alerts

    def _heartbeat(self) -> Metric:
        status = scheduler_status()
        age = status.heartbeat_age_s
        return GaugeMetricFamily(
            "orchestrator_scheduler_heartbeat_age_seconds",
            "Seconds since the leading scheduler's last heartbeat (+Inf if none ever ran).",
            value=math.inf if age is None else age,
        )


def exposition(now: Now = timezone.now) -> bytes:
    """The metrics in the Prometheus text format, collected now on a private registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrchestratorCollector(now))
    return generate_latest(registry)


__all__ = [
    "CONTENT_TYPE",
    "QUERIES_PER_SCRAPE",
    "OrchestratorCollector",
    "exposition",
    "period_seconds",
]
