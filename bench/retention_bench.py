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

from bench.env import SENT_BY_BENCH_CRON, table
from bench.processes import Worker
from tests.support.processes import delete_queues, wait_until

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
        cron=SENT_BY_BENCH_CRON,
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
    reports: list[Any]
    statements: StatementTimes
    batch_times: list[float]
    windows: list[Window]
    queue_ran_dry: bool

    @property
    def deleted(self) -> int:
        return sum(report.runs for report in self.reports)

    @property
    def prune_seconds(self) -> float:
        return sum(report.seconds for report in self.reports)


def measure(runs: int, rounds: int, quiet_seconds: float) -> Result:
    """Build the history, then alternate quiet windows and prunes of ``runs / rounds`` rows
    while the worker dispatches: the machine's other load falls on both kinds of window alike
    (so does the autovacuum that a prune sets off, a real part of its cost)."""
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
    # Enough no-op runs that the queue never empties: the quiet windows and the prunes (a guess
    # of 5,000 deleted rows a second, generous for this machine).
    messages = int(DISPATCH_RATE_GUESS * ((rounds + 1) * quiet_seconds + runs / 5000 + 30))
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

    def quiet() -> Window:
        window = Window("without prune", timezone.now(), None)
        time.sleep(quiet_seconds)
        window.end = timezone.now()
        return window

    windows: list[Window] = []
    reports = []
    chunk = math.ceil(runs / rounds)
    with Worker(queues=[queue], concurrency=2, db_name=db_name):
        live = TaskRun.objects.filter(scheduled_task_id=live_id)
        # Warm up: imports, first connections.
        wait_until(lambda: live.count() >= 100, timeout=120, what="the worker's first runs")
        retention._delete_run_batch = timed_batch  # type: ignore[assignment]
        try:
            for _ in range(rounds):
                windows.append(quiet())
                window = Window("during prune", timezone.now(), None)
                with connection.execute_wrapper(timer.wrapper()):
                    reports.append(retention.prune(batch_size=BATCH_SIZE, max_rows=chunk))
                window.end = timezone.now()
                windows.append(window)
        finally:
            retention._delete_run_batch = original  # type: ignore[assignment]
        windows.append(quiet())
        finished = live.filter(finished_at__isnull=False).count()
    delete_queues([queue])
    return Result(
        runs=runs,
        build_seconds=build_seconds,
        dry_run_seconds=dry_run_seconds,
        dry_run_count=dry.runs,
        reports=reports,
        statements=timer,
        batch_times=sorted(batch_times),
        windows=[_fill(w, live_id) for w in windows],
        queue_ran_dry=finished >= messages,
    )


@dataclass
class Phase:
    """The windows of one kind (with or without a prune), added up."""

    name: str
    seconds: float
    runs: int
    durations_ms: list[float]

    @property
    def rate(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0


def _combined(name: str, windows: list[Window]) -> Phase:
    chosen = [w for w in windows if w.name == name]
    return Phase(
        name=f"{name} ({len(chosen)} windows)",
        seconds=sum(w.seconds for w in chosen),
        runs=sum(w.runs for w in chosen),
        durations_ms=sorted(d for w in chosen for d in w.durations_ms),
    )


def render(result: Result) -> str:
    seconds = result.prune_seconds
    rate = result.deleted / seconds if seconds else 0.0
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
                result.deleted,
                seconds,
                f"{rate:,.0f}",
                sum(report.batches for report in result.reports),
                f"{percentile(batches, 0.5) * 1000:.1f}",
                f"{percentile(batches, 0.99) * 1000:.1f}",
                f"{(batches or [0.0])[-1] * 1000:.1f}",
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
    without = _combined("without prune", result.windows)
    during = _combined("during prune", result.windows)
    dispatch_rows = [
        [
            phase.name,
            phase.seconds,
            phase.runs,
            f"{phase.rate:,.1f}",
            f"{phase.rate / without.rate:.2f}" if without.rate else "-",
            f"{percentile(phase.durations_ms, 0.5):.1f}",
            f"{percentile(phase.durations_ms, 0.95):.1f}",
            f"{(phase.durations_ms or [0.0])[-1]:.1f}",
        ]
        for phase in (without, during)
    ]
    dispatch_table = table(
        [
            "dispatch (worker, 2 processes)",
            "s",
            "runs finished",
            "runs/s",
            "vs without",
            "attempt p50 ms",
            "p95 ms",
            "max ms",
        ],
        dispatch_rows,
    )
    sequence = ", ".join(
        f"{'on' if w.name == 'during prune' else 'off'} {w.rate:,.0f}" for w in result.windows
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
        + f"\n\nRuns/s per window in order (off: no prune, on: pruning): {sequence}."
        + f"\n\nThe dry run counted {result.dry_run_count:,} prunable runs; "
        f"{result.deleted:,} were deleted in {len(result.reports)} prunes of at most "
        f"{math.ceil(result.runs / len(result.reports)):,} rows each." + note
    )


def main(smoke: bool, runs: int | None = None) -> str:
    if runs is None:
        runs = 20_000 if smoke else 1_000_000
    if smoke:
        return render(measure(runs, rounds=2, quiet_seconds=4.0))
    return render(measure(runs, rounds=5, quiet_seconds=10.0))
