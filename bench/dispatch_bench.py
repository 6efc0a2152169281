"""Dispatch overhead: no-op runs through run_scheduled_task against a hand-written task.

One real worker (prefork, Redis broker, PostgreSQL) runs both kinds in alternating blocks, so
load from other processes on the machine falls on both alike. Each block is published to a
new queue, then the worker is told to consume it (``add_consumer``): the block runs from a
full queue and publishing never competes with it for the CPU. A new queue per block, because
after ``cancel_consumer`` the worker's pending BRPOP on the old queue would take the next
message published there and put it back marked "redelivered", which the dispatcher (rightly)
treats as a possibly lost attempt, with an extra query. A block's time is taken from its own
history rows (first start to last finish), so worker start-up, polling and publishing are not
counted.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from bench.baseline_tasks import (
    BASELINE_TASK,
    DISPATCHER_TASK,
    DURABLE_TASK,
    durable_run_once,
    minimal_run_once,
    parse_counts,
)
from bench.env import SENT_BY_BENCH_CRON, table
from bench.processes import Worker
from tests.support.processes import delete_queues, purge_queues, wait_until

IDLE_QUEUE = "bench-idle"
WARM_UP = 50  # runs of each kind before measuring: imports, first connections, caches
LABELS = {
    DISPATCHER_TASK: "orchestrator.run_scheduled_task",
    DURABLE_TASK: "hand-written, durable (same 3 statements)",
    BASELINE_TASK: "hand-written, minimal (2 statements)",
}


@dataclass
class Tally:
    """What one kind of task did over its measured blocks."""

    runs: int = 0
    seconds: float = 0.0
    rss_growth_kib: int = 0
    statements: list[int] = field(default_factory=list)
    # How often each sequence of statements (verb:table, ...) was seen.
    sequences: Counter[str] = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0


def _scheduled_task(name: str) -> int:
    from orchestrator.models import ScheduledTask, TaskDefinition

    definition, _ = TaskDefinition.objects.get_or_create(
        name="bench-noop", defaults={"import_path": "tests.sample_tasks.noop"}
    )
    task = ScheduledTask(name=name, task_definition=definition, cron=SENT_BY_BENCH_CRON, kwargs={})
    task.full_clean()
    task.save()
    return task.pk


def _publish(task_name: str, scheduled_task_id: int, count: int, queue: str) -> None:
    from tests.celery_app import app

    # The message beat sends for a ScheduledTask (args=[pk]); the same options for both kinds.
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task(task_name, args=[scheduled_task_id], queue=queue, producer=producer)


def _run_block(
    worker: Worker, task_name: str, scheduled_task_id: int, count: int
) -> tuple[float, int]:
    """Run ``count`` messages of ``task_name``; return (seconds, pool RSS growth in KiB)."""
    from django.db.models import Max, Min

    from orchestrator.models import TaskRun
    from tests.celery_app import app

    rows = TaskRun.objects.filter(scheduled_task_id=scheduled_task_id)
    last_id = rows.aggregate(last=Max("id"))["last"] or 0
    block = rows.filter(id__gt=last_id)
    queue = f"bench-dispatch-{uuid.uuid4().hex[:8]}"
    _publish(task_name, scheduled_task_id, count, queue)
    rss_before = worker.pool_rss_kib()
    app.control.add_consumer(queue, destination=[worker.hostname], reply=True, timeout=10)
    try:
        wait_until(
            lambda: block.filter(finished_at__isnull=False).count() >= count,
            timeout=60 + count / 5,
            interval=0.2,
            what=f"{count} runs of {task_name}",
        )
    finally:
        app.control.cancel_consumer(queue, destination=[worker.hostname], reply=True, timeout=10)
        delete_queues([queue])
    rss_after = worker.pool_rss_kib()
    span = block.aggregate(first=Min("started_at"), last=Max("finished_at"))
    seconds = (span["last"] - span["first"]).total_seconds()
    # The span runs from the first start to the last finish: count-1 gaps plus one run. Scale
    # it so the rate counts whole runs (it matters only for tiny blocks).
    seconds *= count / max(count - 1, 1)
    return seconds, rss_after - rss_before


@dataclass(frozen=True)
class Setup:
    """One worker and what it runs: ``runs`` of the dispatcher and ``baseline_runs`` of each
    hand-written task, split over ``rounds`` alternating blocks."""

    concurrency: int
    runs: int
    baseline_runs: int
    rounds: int
    persistent_connections: bool = False
    warm_up: int = WARM_UP

    @property
    def label(self) -> str:
        return f"{self.concurrency}, {'persistent' if self.persistent_connections else 'per task'}"


def measure(db_name: str, setup: Setup) -> tuple[dict[str, Tally], list[int]]:
    """Run ``setup``; return the tallies and the pool's RSS (KiB) after the warm-up and after
    each round, to tell steady growth from a plateau."""
    suffix = f"c{setup.concurrency}{'p' if setup.persistent_connections else ''}"
    tasks = {
        DISPATCHER_TASK: _scheduled_task(f"bench-dispatch-{suffix}"),
        DURABLE_TASK: _scheduled_task(f"bench-durable-{suffix}"),
        BASELINE_TASK: _scheduled_task(f"bench-baseline-{suffix}"),
    }
    per_block = {
        DISPATCHER_TASK: setup.runs // setup.rounds,
        DURABLE_TASK: setup.baseline_runs // setup.rounds,
        BASELINE_TASK: setup.baseline_runs // setup.rounds,
    }
    tallies = {name: Tally() for name in tasks}
    purge_queues([IDLE_QUEUE])
    with Worker(
        queues=[IDLE_QUEUE],
        concurrency=setup.concurrency,
        db_name=db_name,
        include=["bench.baseline_tasks"],
        settings="bench.worker_settings" if setup.persistent_connections else "tests.settings",
    ) as worker:
        for name, pk in tasks.items():
            _run_block(worker, name, pk, setup.warm_up)
        rss = [worker.pool_rss_kib()]
        for _ in range(setup.rounds):
            for name, pk in tasks.items():
                seconds, growth = _run_block(worker, name, pk, per_block[name])
                tally = tallies[name]
                tally.runs += per_block[name]
                tally.seconds += seconds
                tally.rss_growth_kib += growth
            rss.append(worker.pool_rss_kib())
        log = worker.log()
    for name, counts in parse_counts(log).items():
        tallies[name].statements = [count for count, _ in counts]
        tallies[name].sequences = Counter(kinds for _, kinds in counts)
    return tallies, rss


def _statements(counts: list[int]) -> str:
    if not counts:
        return "not logged"
    low, high = min(counts), max(counts)
    if low == high:
        return str(low)
    return f"{statistics.median(counts):g} (min {low}, max {high})"


def run(setups: list[Setup]) -> str:
    from django.db import connection

    db_name = connection.settings_dict["NAME"]
    rows = []
    sequences: dict[str, Counter[str]] = {name: Counter() for name in LABELS}
    memory = []
    for setup in setups:
        tallies, rss = measure(db_name, setup)
        memory.append(
            f"- worker {setup.label}: "
            + ", ".join(f"{kib / 1024:.1f}" for kib in rss)
            + f" ({setup.runs // setup.rounds:,} + 2 x {setup.baseline_runs // setup.rounds:,}"
            " runs per round)"
        )
        for name, tally in tallies.items():
            sequences[name].update(tally.sequences)
        durable = tallies[DURABLE_TASK].per_second
        minimal = tallies[BASELINE_TASK].per_second
        for name, tally in tallies.items():
            rows.append(
                [
                    setup.label,
                    LABELS[name],
                    tally.runs,
                    f"{tally.per_second:,.1f}",
                    _ratio(tally.per_second, durable),
                    _ratio(tally.per_second, minimal),
                    _statements(tally.statements),
                    f"{tally.rss_growth_kib / 1024:+.1f}",
                ]
            )
    notes = []
    for name, seen in sequences.items():
        total = sum(seen.values())
        for kinds, times in seen.most_common(3):
            notes.append(f"- {LABELS[name]}, {times:,} of {total:,} attempts: `{kinds}`")
    return (
        table(
            [
                "worker concurrency, DB connection",
                "task",
                "runs",
                "runs/s",
                "vs durable (target ≥ 0.9)",
                "vs minimal",
                "SQL statements per successful attempt (target ≤ 3)",
                "pool RSS growth MiB",
            ],
            rows,
        )
        + "\n\nStatements per successful attempt, as logged by the worker:\n\n"
        + "\n".join(notes)
        + "\n\nPool RSS in MiB after the warm-up, then after each round:\n\n"
        + "\n".join(memory)
    )


def _ratio(rate: float, baseline: float) -> str:
    return f"{rate / baseline:.2f}" if baseline else "-"


def in_process(runs: int, rounds: int, *, new_connection: bool = False) -> str:
    """The same three kinds called in this process, no broker: the dispatcher's own cost.

    Alternating blocks of ``runs`` calls each; the median block gives the time per call. On one
    persistent connection, or (``new_connection``) on a new one per call, as a worker with
    Django's default ``CONN_MAX_AGE=0`` does: a new PostgreSQL backend reads the catalog of
    every table and index a statement touches, and the dispatcher touches three more tables
    than the hand-written task (the definition, the task's state, the aggregates).
    """
    from django.db import connection

    from orchestrator.dispatcher import Attempt, run_task

    suffix = "-new-connection" if new_connection else ""
    kinds = {
        DISPATCHER_TASK: _scheduled_task(f"bench-inprocess-dispatch{suffix}"),
        DURABLE_TASK: _scheduled_task(f"bench-inprocess-durable{suffix}"),
        BASELINE_TASK: _scheduled_task(f"bench-inprocess-minimal{suffix}"),
    }
    calls = {
        DISPATCHER_TASK: lambda pk: run_task(Attempt(pk, celery_task_id="in-process")),
        DURABLE_TASK: lambda pk: durable_run_once(pk, "in-process"),
        BASELINE_TASK: lambda pk: minimal_run_once(pk, "in-process"),
    }
    per_call: dict[str, list[float]] = {name: [] for name in kinds}
    for round_number in range(rounds + 1):
        for name, pk in kinds.items():
            call = calls[name]
            started = time.perf_counter()
            for _ in range(runs):
                call(pk)
                if new_connection:
                    connection.close()
            if round_number:  # the first round warms up imports, caches and the connection
                per_call[name].append((time.perf_counter() - started) / runs)
    durable = 1 / statistics.median(per_call[DURABLE_TASK])
    minimal = 1 / statistics.median(per_call[BASELINE_TASK])
    rows = []
    for name, seconds in per_call.items():
        rate = 1 / statistics.median(seconds)
        rows.append(
            [
                LABELS[name],
                runs * rounds,
                f"{statistics.median(seconds) * 1000:.2f}",
                f"{rate:,.0f}",
                _ratio(rate, durable),
                _ratio(rate, minimal),
            ]
        )
    return table(
        [
            "in-process call, new connection per run" if new_connection else "in-process call",
            "runs",
            "ms per run (median block)",
            "runs/s",
            "vs durable",
            "vs minimal",
        ],
        rows,
    )


def main(smoke: bool) -> str:
    if smoke:
        return (
            in_process(runs=50, rounds=2)
            + "\n\n"
            + in_process(runs=10, rounds=2, new_connection=True)
            + "\n\n"
            + run([Setup(concurrency=2, runs=200, baseline_runs=100, rounds=2, warm_up=10)])
        )
    return (
        in_process(runs=500, rounds=10)
        + "\n\n"
        + in_process(runs=100, rounds=10, new_connection=True)
        + "\n\n"
        + run(
            [
                # Django's default: a new connection per task. The dispatcher's 10,000 runs give
                # the memory growth; fewer hand-written runs suffice for the rate.
                Setup(concurrency=2, runs=10_000, baseline_runs=2_000, rounds=5),
                Setup(
                    concurrency=1,
                    runs=1_000,
                    baseline_runs=1_000,
                    rounds=4,
                    persistent_connections=True,
                ),
            ]
        )
    )
