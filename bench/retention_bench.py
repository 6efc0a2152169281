"""Retention: pruning a million old runs while a real worker keeps dispatching.

The history is built in SQL (``generate_series``, PostgreSQL): ``runs`` rows spread over 100
scheduled tasks, all started 100 to 200 days ago (past the default RUN_RETENTION_DAYS of 90),
copied from one template row so every column the model has is filled as the ORM fills it. Mostly
successes, with retried attempts (their retries sent) and failures, as a flaky task leaves them.

A real Celery worker (prefork, two processes, Redis, PostgreSQL) consumes a queue filled with
no-op runs of another task before, during and after ``retention.prune()`` runs in this process
as ``manage.py orchestrator_prune`` would (no time budget, batches of 1,000). The dispatch rate
is taken from the worker's own history rows (runs finished in each window), so the prune's
effect on dispatching is read side by side with the windows without it. Each statement of the
prune is timed through ``execute_wrapper``; a batch's transaction is the longest any row lock is
held.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.env import table
from bench.processes import Worker
from tests.support.processes import purge_queues, wait_until

TASKS = 100
DISPATCH_RATE_GUESS = 150  # runs/s a two-process worker does at most here: sizes the queue
BATCH_SIZE = 1000


@dataclass
class StatementTimes:
    """The longest and total time of the prune's statements, by kind."""

    longest: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    total: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    count: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def wrapper(self) -> Callable[..., Any]:
        def timed(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any):
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                kind = _kind(sql)
                elapsed = time.perf_counter() - started
                self.longest[kind] = max(self.longest[kind], elapsed)
                self.total[kind] += elapsed
                self.count[kind] += 1

        return timed


def _kind(sql: str) -> str:
    text = sql.lstrip().upper()
    if text.startswith("DELETE") and "TASKRUN" in text:
        return "DELETE of runs"
    if text.startswith("SELECT") and "FOR UPDATE" in text:
        return "lock and read the batch (SELECT ... FOR UPDATE SKIP LOCKED)"
    if text.startswith("SELECT") and "TASKRUN" in text:
        return "choose the batch (SELECT ids)"
    return text.split(" ", 1)[0]


def _make_tasks() -> tuple[list[int], int]:
    """The 100 tasks whose history is old, and the task the worker runs."""
    from orchestrator.models import ScheduledTask, TaskDefinition

    definition, _ = TaskDefinition.objects.get_or_create(
        name="bench-retention-noop", defaults={"import_path": "tests.sample_tasks.noop"}
    )
    tag = uuid.uuid4().hex[:6]
    old = ScheduledTask.objects.bulk_create(
        ScheduledTask(
            name=f"bench-retention-{tag}-{i:03d}",
            task_definition=definition,
            cron="* * * * *",
            kwargs={},
            enabled=False,
        )
        for i in range(TASKS)
    )
    live = ScheduledTask(
        name=f"bench-retention-{tag}-dispatch",
        task_definition=definition,
        cron="* * * * *",
        kwargs={},
    )
    live.full_clean()
    live.save()
    return [task.pk for task in old], live.pk


def build_history(runs: int, task_ids: list[int]) -> float:
    """Insert ``runs`` old runs over ``task_ids`` in one statement; return the seconds it took."""
    from django.db import connection
    from django.utils import timezone

    from orchestrator.models import TaskRun

    now = timezone.now()
    template = TaskRun.objects.create(
        scheduled_task_id=task_ids[0],
        status=TaskRun.Status.SUCCEEDED,
        started_at=now,
        finished_at=now,
        worker="bench@localhost",
        queue="celery",
    )
    fields = [f for f in TaskRun._meta.concrete_fields if not f.primary_key]
    overrides = {
        "scheduled_task_id": "(%s::bigint[])[1 + g %% %s]",
        # Spread over 100 days, the newest 100 days old: every row is past the cut-off.
        "started_at": "%s::timestamptz - (g * %s) * interval '1 second'",
        "finished_at": "%s::timestamptz - (g * %s - 1) * interval '1 second'",
        "status": "CASE WHEN g %% 10 < 7 THEN 'succeeded' WHEN g %% 10 < 9 THEN 'retried' "
        "ELSE 'failed' END",
        "next_retry_at": "CASE WHEN g %% 10 BETWEEN 7 AND 8 THEN %s::timestamptz - (g * %s - 2) "
        "* interval '1 second' END",
        "retry_sent_at": "CASE WHEN g %% 10 BETWEEN 7 AND 8 THEN %s::timestamptz - (g * %s - 1) "
        "* interval '1 second' END",
        "tick_key": "NULL",
        "celery_task_id": "md5(g::text)",
    }
    newest = now - dt.timedelta(days=100)
    spacing = 100 * 86400 / runs  # seconds between two rows
    params: dict[str, list[Any]] = {
        "scheduled_task_id": [task_ids, len(task_ids)],
        "started_at": [newest, spacing],
        "finished_at": [newest, spacing],
        "next_retry_at": [newest, spacing],
        "retry_sent_at": [newest, spacing],
    }
    columns, values, args = [], [], []
    for f in fields:
        columns.append(connection.ops.quote_name(f.column))
        if f.name in overrides or f.attname in overrides:
            key = f.attname if f.attname in overrides else f.name
            values.append(overrides[key])
            args.extend(params.get(key, []))
        else:
            values.append("t." + connection.ops.quote_name(f.column))
    table_name = connection.ops.quote_name(TaskRun._meta.db_table)
    sql = (
        f"INSERT INTO {table_name} ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} FROM {table_name} t, generate_series(1, %s) g "
        "WHERE t.id = %s"
    )
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(sql, [*args, runs, template.pk])
        cursor.execute(f"DELETE FROM {table_name} WHERE id = %s", [template.pk])
        cursor.execute(f"ANALYZE {table_name}")
    return time.perf_counter() - started


def _publish(scheduled_task_id: int, count: int, queue: str) -> None:
    from orchestrator.task_names import RUN_SCHEDULED_TASK
    from tests.celery_app import app

    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task(
                RUN_SCHEDULED_TASK, args=[scheduled_task_id], queue=queue, producer=producer
            )


@dataclass
class Window:
    name: str
    start: Any
    end: Any
    runs: int = 0
    durations_ms: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def rate(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0


def _fill(window: Window, scheduled_task_id: int) -> Window:
    from orchestrator.models import TaskRun

    durations = TaskRun.objects.filter(
        scheduled_task_id=scheduled_task_id,
        finished_at__gte=window.start,
        finished_at__lt=window.end,
    ).values_list("duration", flat=True)
    window.durations_ms = sorted(d.total_seconds() * 1000 for d in durations if d is not None)
    window.runs = len(window.durations_ms)
    return window


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    return values[max(math.ceil(fraction * len(values)), 1) - 1]


@dataclass
class Result:
    runs: int
    build_seconds: float
    dry_run_seconds: float
    dry_run_count: int
    report: Any
    statements: StatementTimes
    batch_times: list[float]
    windows: list[Window]
    queue_ran_dry: bool


def measure(runs: int, quiet_seconds: float) -> Result:
    from django.db import connection
    from django.utils import timezone

    from orchestrator import retention
    from orchestrator.models import TaskRun

    db_name = connection.settings_dict["NAME"]
    task_ids, live_id = _make_tasks()
    build_seconds = build_history(runs, task_ids)

    started = time.perf_counter()
    dry = retention.prune(dry_run=True)
    dry_run_seconds = time.perf_counter() - started

    queue = f"bench-retention-{uuid.uuid4().hex[:8]}"
    # Enough no-op runs that the queue never empties: two quiet windows and the prune (a guess
    # of 5,000 deleted rows a second, generous for this machine).
    messages = int(DISPATCH_RATE_GUESS * (2 * quiet_seconds + runs / 5000 + 30))
    _publish(live_id, messages, queue)
    batch_times: list[float] = []
    timer = StatementTimes()
    original = retention._delete_run_batch

    def timed_batch(ids: list[int], prunable: Any) -> int:
        began = time.perf_counter()
        try:
            return original(ids, prunable)
        finally:
            batch_times.append(time.perf_counter() - began)

    with Worker(queues=[queue], concurrency=2, db_name=db_name):
        live = TaskRun.objects.filter(scheduled_task_id=live_id)
        # Warm up: imports, first connections.
        wait_until(lambda: live.count() >= 100, timeout=120, what="the worker's first runs")
        before = Window("without prune (before)", timezone.now(), None)
        time.sleep(quiet_seconds)
        before.end = during_start = timezone.now()
        retention._delete_run_batch = timed_batch  # type: ignore[assignment]
        try:
            with connection.execute_wrapper(timer.wrapper()):
                report = retention.prune(batch_size=BATCH_SIZE)
        finally:
            retention._delete_run_batch = original  # type: ignore[assignment]
        during = Window("during prune", during_start, timezone.now())
        after = Window("without prune (after)", during.end, None)
        time.sleep(quiet_seconds)
        after.end = timezone.now()
        finished = live.filter(finished_at__isnull=False).count()
    purge_queues([queue])
    windows = [_fill(w, live_id) for w in (before, during, after)]
    return Result(
        runs=runs,
        build_seconds=build_seconds,
        dry_run_seconds=dry_run_seconds,
        dry_run_count=dry.runs,
        report=report,
        statements=timer,
        batch_times=sorted(batch_times),
        windows=windows,
        queue_ran_dry=finished >= messages,
    )


def render(result: Result) -> str:
    report = result.report
    rate = report.runs / report.seconds if report.seconds else 0.0
    stats = result.statements
    batches = result.batch_times
    prune_table = table(
        [
            "old runs",
            "build s (INSERT ... generate_series)",
            "dry-run count s",
            "runs deleted",
            "prune s",
            "rows/s",
            "batches",
            "batch (lock held) p50 ms",
            "p99 ms",
            "longest ms",
        ],
        [
            [
                result.runs,
                result.build_seconds,
                result.dry_run_seconds,
                report.runs,
                report.seconds,
                f"{rate:,.0f}",
                report.batches,
                f"{percentile(batches, 0.5) * 1000:.1f}",
                f"{percentile(batches, 0.99) * 1000:.1f}",
                f"{report.longest_batch * 1000:.1f}",
            ]
        ],
    )
    statement_rows = [
        [
            kind,
            stats.count[kind],
            f"{stats.total[kind] / stats.count[kind] * 1000:.1f}",
            f"{stats.longest[kind] * 1000:.1f}",
        ]
        for kind in sorted(stats.count, key=lambda k: -stats.total[k])
    ]
    statement_table = table(["prune statement", "count", "mean ms", "longest ms"], statement_rows)
    base = [w.rate for w in result.windows if w.name.startswith("without")]
    baseline = sum(base) / len(base) if base else 0.0
    dispatch_rows = [
        [
            w.name,
            w.seconds,
            w.runs,
            f"{w.rate:,.1f}",
            f"{w.rate / baseline:.2f}" if baseline else "-",
            f"{percentile(w.durations_ms, 0.5):.1f}",
            f"{percentile(w.durations_ms, 0.95):.1f}",
            f"{(w.durations_ms or [0.0])[-1]:.1f}",
        ]
        for w in result.windows
    ]
    dispatch_table = table(
        [
            "dispatch (worker, 2 processes)",
            "window s",
            "runs finished",
            "runs/s",
            "vs without",
            "attempt p50 ms",
            "p95 ms",
            "max ms",
        ],
        dispatch_rows,
    )
    note = (
        "\n\nThe worker's queue ran dry before the end: the rates are a lower bound."
        if result.queue_ran_dry
        else ""
    )
    return (
        prune_table
        + "\n\n"
        + statement_table
        + "\n\n"
        + dispatch_table
        + f"\n\nDry run counted {result.dry_run_count:,} prunable runs; the prune "
        f"{'completed' if report.complete else 'did not complete'}." + note
    )


def main(smoke: bool, runs: int | None = None) -> str:
    if runs is None:
        runs = 20_000 if smoke else 1_000_000
    return render(measure(runs, quiet_seconds=5.0 if smoke else 20.0))
