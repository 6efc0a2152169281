"""Beat at scale: orchestrator's scheduler side by side with django-celery-beat's DatabaseScheduler.

N every-minute ScheduledTasks (created, then synced by ``beat_sync`` as a project would), one real
``celery beat`` subprocess at a time on the bench's database and Redis, started as a new user
would (``celery beat -S <scheduler>``, default loop interval), and no worker: the messages stay in
the Redis lists of the bench's queue. The bench process reads the lists' lengths every 20 ms
(``LLEN``, O(1)), so it knows when each message arrived without touching the messages: the lag of
the k-th message is the time its list reached length k minus the tick. Both schedulers get the
same rows and the same minute boundary rules; each run is measured on the first minute boundary
after its rows were reset and its beat started, at least 10 s after its start-up ended.

Also measured in the same run: the SQL statements of an idle wake-up (no change, nothing due) at
each N, in-process; the takeover time of a killed leader (two beats, SIGKILL the one holding the
lease, until the other holds it); and, as the reference, a bare kombu producer publishing the same
number of Celery task messages (built once by Celery, published one by one).
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.env import table
from bench.processes import LOG_DIR
from tests.support.processes import CeleryProcess, purge_queues, subprocess_env, wait_until

QUEUE = "bench-sched"
OURS = "orchestrator.scheduler:Scheduler"
DCB = "django_celery_beat.schedulers:DatabaseScheduler"
LABELS = {OURS: "orchestrator Scheduler", DCB: "DatabaseScheduler"}
POLL = 0.02
WINDOW = 60.0  # a tick's messages must all be out before the next tick
# A beat is started at most this far into a minute, and measured on the next minute boundary
# if its start-up is over STARTUP_MARGIN before it; else it is started again, up to STARTS times.
LATEST_START_SECOND = 30
STARTUP_MARGIN = dt.timedelta(seconds=10)
STARTS = 3


@dataclass
class LagRun:
    scheduler: str
    n: int
    sent: int
    lags: list[float]  # of the messages that arrived within the minute, in order
    pass_seconds: float | None = None  # the scheduler's own "sent N in X s" (ours only)

    def quantile(self, q: float) -> str:
        if self.sent < self.n and q * self.n > self.sent:
            return f"> {WINDOW:.0f}"
        index = min(len(self.lags) - 1, max(0, round(q * self.n) - 1))
        return f"{self.lags[index]:.2f}"


def _make_tasks(n: int) -> None:
    from orchestrator.beat_sync import beat_sync
    from orchestrator.models import ScheduledTask, TaskDefinition

    # The benchmarks of one run share a database: the scheduled tasks that others left (the
    # beat_sync benchmark's 10,000) would be due on the same minute too. Only ours stay, and
    # beat_sync deletes the entries of the others.
    ScheduledTask.objects.exclude(queue=QUEUE).delete()
    definition, _ = TaskDefinition.objects.get_or_create(
        name="bench-noop", defaults={"import_path": "tests.sample_tasks.noop"}
    )
    existing = ScheduledTask.objects.count()
    ScheduledTask.objects.bulk_create(
        ScheduledTask(
            name=f"sched-{i:05d}", task_definition=definition, cron="* * * * *", queue=QUEUE
        )
        for i in range(existing, n)
    )
    beat_sync()


def _reset_run_state() -> None:
    """Every row as if just synced: due at the next minute, never run."""
    from django.utils import timezone
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    PeriodicTask.objects.filter(queue=QUEUE).update(
        last_run_at=None, total_run_count=0, date_changed=timezone.now()
    )
    PeriodicTasks.update_changed()


def _queue_length(client) -> int:
    # Messages without a priority land in the bare list; with priority_steps, others in "q:N".
    pipe = client.pipeline(transaction=False)
    pipe.llen(QUEUE)
    for step in range(1, 10):
        pipe.llen(f"{QUEUE}:{step}")
    return sum(pipe.execute())


def _redis():
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def _beat(scheduler: str, db_name: str, tag: str, folder: Path) -> CeleryProcess:
    from django.conf import settings

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return CeleryProcess(
        [
            "beat",
            "--loglevel=INFO",
            f"--scheduler={scheduler}",
            f"--pidfile={folder / f'{tag}.pid'}",
            f"--schedule={folder / f'{tag}.schedule'}",
        ],
        subprocess_env(db_name, settings.CELERY_BROKER_URL),
        LOG_DIR / f"scheduler-{tag}-{uuid.uuid4().hex[:6]}.log",
    )


def _next_tick(after: dt.datetime) -> dt.datetime:
    return after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)


def measure_lag(scheduler: str, n: int, db_name: str, folder: Path) -> LagRun:
    """The lag of each of the ``n`` messages of one tick, sent by a beat started for it.

    The tick is the first minute boundary after the rows were reset and the beat started: the
    schedules are due every minute, so a boundary between the reset and the measured tick would
    have the beat send then. The beat starts early in a minute, and its start-up (the startup
    beat_sync, DatabaseScheduler's first read) must end ``STARTUP_MARGIN`` before the tick; a
    start-up that ends later, or a beat that sends before the tick, is stopped and started
    again on the next minute (and printed).
    """
    for _ in range(STARTS):
        result = _measure_lag_once(scheduler, n, db_name, folder)
        if result is not None:
            return result
    raise RuntimeError(
        f"{LABELS[scheduler]} took too long to start or sent before the tick, {STARTS} times"
    )


def _measure_lag_once(scheduler: str, n: int, db_name: str, folder: Path) -> LagRun | None:
    from django.utils import timezone

    if timezone.now().second >= LATEST_START_SECOND:
        time.sleep(62 - timezone.now().second)
    # The tick is the first boundary after the rows were reset: DatabaseScheduler counts a row
    # that never ran from the time it changed, so a boundary between the reset and the tick
    # (not only between the beat's start and the tick) would have it send there.
    tick = _next_tick(timezone.now())
    _reset_run_state()
    purge_queues([QUEUE, *[f"{QUEUE}:{step}" for step in range(1, 10)]])
    client = _redis()
    beat = _beat(scheduler, db_name, f"lag-{n}", folder)
    try:
        beat.wait_for_log("beat: Starting", timeout=120)
        if scheduler == OURS:
            beat.wait_for_log("took the lease", timeout=120)
        if timezone.now() + STARTUP_MARGIN > tick:
            return None
        time.sleep(max(0.0, (tick - timezone.now()).total_seconds() - 1))
        if _queue_length(client):
            # Not a measurement of this tick; once in a CI run DatabaseScheduler sent its rows
            # at start-up although they were reset within the minute. Started again, up to
            # STARTS times, then it is an error.
            print(f"{LABELS[scheduler]} sent before the tick, started again: see {beat.log_path}")
            return None
        arrivals: list[tuple[float, int]] = []
        end = tick.timestamp() + WINDOW
        count = 0
        while time.time() < end and count < n:
            count = _queue_length(client)
            arrivals.append((time.time(), count))
            time.sleep(POLL)
        if scheduler == OURS and count >= n:
            # Its log line comes once the pass has also scheduled the next ticks.
            beat.wait_for_log(" due messages in ", timeout=60)
        log = beat.log()
    finally:
        beat.stop()
    lags: list[float] = []
    for when, length in arrivals:
        while len(lags) < min(length, n):
            lags.append(max(0.0, when - tick.timestamp()))
    # Its own account of the pass (ours only): the rows, and the maintenance entry, due then.
    passes = [
        float(seconds)
        for sent, due, seconds in re.findall(
            r"sent (\d+) of (\d+) due messages in ([0-9.]+) s", log
        )
        if int(sent) >= n
    ]
    return LagRun(scheduler, n, min(count, n), lags, passes[0] if passes else None)


def idle_queries(scheduler: str, n: int) -> float:
    """SQL statements per wake-up of an in-process scheduler with nothing due or changed."""
    from django.db import connection
    from django.utils import timezone
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    from orchestrator.scheduler import Scheduler
    from tests.celery_app import app

    # Every row ran at this minute's tick: nothing is due before the next one.
    if timezone.now().second > 35:
        time.sleep(62 - timezone.now().second)
    PeriodicTask.objects.update(last_run_at=timezone.now().replace(second=0, microsecond=0))
    wakeups = 10
    clock = [1000.0]
    if scheduler == OURS:
        instance = Scheduler(app=app, monotonic=lambda: clock[0], max_interval=1)
        instance.tick()  # takes the lease (nobody else runs now)
    else:
        instance = DatabaseScheduler(app=app)
        instance.tick()
    count = 0

    def counter(execute, sql, params, many, context):
        nonlocal count
        count += 1
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(counter):
            for _ in range(wakeups):
                clock[0] += 1.0  # one poll interval later, without sleeping
                instance.tick()
    finally:
        if scheduler == OURS:
            instance.close()
    return count / wakeups


def measure_takeover(db_name: str, folder: Path) -> tuple[float, float]:
    """Seconds from SIGKILL of the leader to the standby holding the lease; and the lease."""
    from django.conf import settings

    from orchestrator.models import SchedulerLease
    from orchestrator.scheduler.lease import LEASE_NAME

    beats = [_beat(OURS, db_name, f"ha-{i}", folder) for i in range(2)]
    try:
        for beat in beats:
            beat.wait_for_log("beat: Starting", timeout=120)

        def leader() -> tuple[SchedulerLease, CeleryProcess] | None:
            row = SchedulerLease.objects.filter(name=LEASE_NAME).first()
            for beat in beats:
                if row is not None and row.holder.endswith(f":{beat.process.pid}"):
                    return row, beat
            return None

        row, process = wait_until(leader, timeout=60, what="one of the two beats to lead")
        process.kill(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(
            lambda: SchedulerLease.objects.filter(name=LEASE_NAME, term__gt=row.term).exists(),
            timeout=120,
            interval=0.05,
        )
        taken = time.monotonic() - killed
    finally:
        for beat in beats:
            beat.stop()
    lease_seconds = settings.ORCHESTRATOR.get("SCHEDULER_LEASE_SECONDS", 10)
    return taken, float(lease_seconds)


def bare_producer(n: int) -> float:
    """Seconds for a bare kombu producer to publish ``n`` Celery task messages, one by one."""
    from tests.celery_app import app

    purge_queues([QUEUE])
    message = app.amqp.create_task_message(
        uuid.uuid4().hex,
        "orchestrator.run_scheduled_task",
        [1],
        {"scheduled_for": "2026-01-01T00:00:00+00:00"},
    )
    with app.connection_for_write() as connection:
        connection.ensure_connection()
        producer = app.amqp.Producer(connection, auto_declare=False)
        started = time.perf_counter()
        for _ in range(n):
            producer.publish(
                message.body,
                routing_key=QUEUE,
                exchange="",
                headers=message.headers,
                serializer="json",
                **message.properties,
            )
        seconds = time.perf_counter() - started
    purge_queues([QUEUE])
    return seconds


def run(sizes: list[int], producer_n: int) -> str:
    from django.db import connection

    db_name = connection.settings_dict["NAME"]
    folder = Path(tempfile.mkdtemp(prefix="scheduler-bench-"))
    rows = []
    idle: dict[tuple[str, int], float] = {}
    reference = 0.0
    for n in sizes:
        _make_tasks(n)
        for scheduler in (DCB, OURS):
            if scheduler == OURS and n == sizes[-1]:
                # Right before the largest run: the machine's load is shared by both alike.
                reference = bare_producer(producer_n)
            result = measure_lag(scheduler, n, db_name, folder)
            idle[(scheduler, n)] = idle_queries(scheduler, n)
            rows.append(
                [
                    LABELS[scheduler],
                    n,
                    f"{result.sent:,} of {n:,}",
                    result.quantile(0.5),
                    result.quantile(0.99),
                    result.quantile(1.0),
                    f"{result.pass_seconds:.2f}" if result.pass_seconds is not None else "-",
                    f"{idle[(scheduler, n)]:g}",
                ]
            )
    takeover, lease_seconds = measure_takeover(db_name, folder)
    per_10k = reference * 10_000 / producer_n
    return (
        table(
            [
                "scheduler",
                "every-minute schedules",
                "sent in the minute",
                "lag p50 s",
                "lag p99 s",
                "lag max s",
                "send pass s (its log)",
                "queries per idle wake-up",
            ],
            rows,
        )
        + "\n\n"
        + table(
            ["reference and failover", "value"],
            [
                [
                    f"bare kombu producer, {producer_n:,} task messages one by one (just before "
                    f"orchestrator's {sizes[-1]:,} run)",
                    f"{reference:.2f} s ({producer_n / reference:,.0f} messages/s)",
                ],
                [
                    "target for the last of 10,000 (1.25 x the bare producer)",
                    f"{1.25 * per_10k:.2f} s",
                ],
                [
                    f"takeover of a SIGKILLed leader (lease {lease_seconds:g} s)",
                    f"{takeover:.1f} s",
                ],
            ],
        )
        + f'\n\nLag = arrival in Redis minus the tick; quantiles over all N messages ("> '
        f'{WINDOW:.0f}": not sent within the minute). Idle wake-ups: nothing due, nothing '
        "changed, in-process, averaged over 10 wake-ups.\n"
    )


def main(smoke: bool) -> str:
    if smoke:
        return run([100], producer_n=1_000)
    return run([1_000, 10_000], producer_n=10_000)
