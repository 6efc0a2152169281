"""What production does to the dispatcher, done to real processes: killed workers, a restarted
broker, a dropped database connection, two beats.

Each test drives real Celery workers (and beat) through the broker of CELERY_BROKER_URL (Redis or
RabbitMQ; tests marked ``redis`` or ``rabbitmq`` prove what only that broker does) and reads the
history they wrote in PostgreSQL. Waits poll with generous limits; the only fixed pauses are the
faults' own lengths (how long the broker stays down).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask, PeriodicTasks

import tests.celery_app  # noqa: F401  (makes the test project's app current for enqueue())
from orchestrator.beat_sync import periodic_task_name
from orchestrator.dispatcher import enqueue
from orchestrator.models import ScheduledTask, TaskRun
from orchestrator.routing import message_options
from orchestrator.tasks import run_scheduled_task
from tests.celery_app import app
from tests.integration.conftest import CeleryProcess, wait_until
from tests.integration.fault_hooks import PAUSE_ENV
from tests.support.tcp_proxy import TcpProxy
from tests.utils import make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

HOOKS = ["tests.integration.fault_hooks"]
# A cron that fires on January 1st only, so beat leaves these tasks alone: the test sends their
# runs itself, and counts them.
NEVER = "0 0 1 1 *"
# The worker that picks up a dead worker's message: Redis gives it back after this many seconds
# (RabbitMQ as soon as the dead worker's connection closes).
VISIBILITY = {"ORCHESTRATOR_TEST_VISIBILITY_TIMEOUT": "5"}


def finished_runs(task: ScheduledTask, count: int) -> list[TaskRun] | None:
    """The task's runs by attempt once ``count`` of them exist and none is still running."""
    runs = list(TaskRun.objects.filter(scheduled_task=task).order_by("attempt", "id"))
    if len(runs) >= count and all(r.status != TaskRun.Status.RUNNING for r in runs):
        return runs
    return None


def recorder(
    name: str, log: Path, seconds: float = 0.0, cron: str = NEVER, **fields: object
) -> ScheduledTask:
    """A task whose every call appends ``name`` to ``log``: one line per execution."""
    return make_scheduled_task(
        name,
        "tests.sample_tasks.record",
        kwargs={"log_file": str(log), "label": name, "seconds": seconds},
        cron=cron,
        max_retries=0,
        **fields,
    )


def calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def read_marker(path: Path) -> tuple[int, int] | None:
    """``(pid, run id)`` written by fault_hooks once a success is recorded, else None."""
    if not path.exists():
        return None
    pid, run_id = path.read_text().split()
    return int(pid), int(run_id)


# --- 1. a worker killed --------------------------------------------------------------------
# A pool process killed in the middle of the function is test_worker.py's
# test_an_attempt_whose_worker_process_dies_runs_again_and_the_dead_row_is_lost.


def test_a_pool_process_killed_between_the_outcome_and_the_ack_does_not_run_it_again(
    start_worker, scratch_dir: Path
) -> None:
    log, marker = scratch_dir / "calls.log", scratch_dir / "paused"
    task = recorder("killed-before-ack", log)
    worker = start_worker(include=HOOKS, **{PAUSE_ENV: str(marker)})

    enqueue(task)
    pid, run_id = wait_until(lambda: read_marker(marker), timeout=30)
    assert TaskRun.objects.get(pk=run_id).status == TaskRun.Status.SUCCEEDED
    os.kill(pid, signal.SIGKILL)  # the pool process, not the worker

    # reject_on_worker_lost puts the message back at once; the next pool process gets it.
    worker.wait_for_log("delivered again after it had finished (succeeded", timeout=60)
    assert "WorkerLostError" in worker.log()
    assert calls(log) == ["killed-before-ack"]
    assert list(TaskRun.objects.values_list("pk", "status")) == [(run_id, "succeeded")]


def test_a_whole_worker_killed_loses_no_run_and_repeats_no_finished_one(
    start_worker, scratch_dir: Path
) -> None:
    log, marker = scratch_dir / "calls.log", scratch_dir / "paused"
    pid_file = scratch_dir / "pid"
    mid_run = make_scheduled_task(
        "killed-mid-run",
        "tests.sample_tasks.hang_once",
        kwargs={"counter_file": str(scratch_dir / "count"), "pid_file": str(pid_file)},
        cron=NEVER,
        max_retries=0,
    )
    before_ack = recorder("killed-before-ack", log)
    first = start_worker(concurrency=2, include=HOOKS, **{PAUSE_ENV: str(marker)})

    enqueue(mid_run)
    enqueue(before_ack)
    # One attempt is inside its function, the other past its outcome, before the ack.
    wait_until(lambda: pid_file.exists() and read_marker(marker), timeout=30)
    first.kill()  # the main process and its pool: nobody is left to put a message back
    first.process.wait(timeout=10)
    assert TaskRun.objects.get(scheduled_task=mid_run).status == TaskRun.Status.RUNNING

    second = start_worker(purge=False, **VISIBILITY)

    runs = wait_until(lambda: finished_runs(mid_run, 2), timeout=90)
    assert [(r.attempt, r.status) for r in runs] == [(1, "lost"), (1, "succeeded")]
    assert runs[0].error_type == "WorkerLost"
    assert runs[0].finished_at is not None
    assert runs[0].celery_task_id == runs[1].celery_task_id
    assert runs[1].result == "call 2"
    second.wait_for_log("delivered again after it had finished (succeeded", timeout=60)
    assert calls(log) == ["killed-before-ack"]
    assert TaskRun.objects.filter(scheduled_task=before_ack).count() == 1


# --- 2. the broker restarted ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own, on a spare port, that can be stopped and restarted.

    Stopping is ``SHUTDOWN SAVE``: the server writes what it holds (queued and unacknowledged
    messages) to its folder, as a Redis configured for persistence does on a restart; starting
    again on the same port and folder loads it. Messages the broker accepted survive; messages
    sent while it is down never reach it, which is the sender's to handle.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.db = 6
        self.url = f"redis://127.0.0.1:{self.port}/{self.db}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.folder / "redis.log", "a")  # noqa: SIM115  (the process owns it)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self.ping, timeout=20, interval=0.1)

    def ping(self) -> bool:
        try:
            return bool(self._client().ping())
        except Exception:
            return False

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._client().shutdown(save=True)
        if self.process is not None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def is_drained(self) -> bool:
        """No message waits in a queue and none is unacknowledged (the runs ack late)."""
        client = self._client()
        waiting = sum(client.llen(key) for key in client.keys("celery*"))
        return waiting == 0 and client.hlen("unacked") == 0

    def _client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=self.db, socket_timeout=2)


@pytest.fixture
def own_redis(scratch_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(scratch_dir)
    server.start()
    yield server
    server.stop()


def send_run(task: ScheduledTask, broker_url: str) -> None:
    """What enqueue() sends, through the given broker rather than the test's own."""
    with app.connection_for_write(broker_url) as conn:
        run_scheduled_task.apply_async(
            args=[task.pk], kwargs={"trigger": "manual"}, connection=conn, **message_options(task)
        )


def due_now(task: ScheduledTask) -> None:
    """Make beat find ``task``'s current tick due now (as if it last ran two minutes ago).

    A raw update, as beat itself writes it; ``update_changed()`` makes running beats reload.
    """
    PeriodicTask.objects.filter(name=periodic_task_name(task.pk)).update(
        last_run_at=timezone.now() - dt.timedelta(minutes=2)
    )
    PeriodicTasks.update_changed()


def succeeded(*tasks: ScheduledTask) -> bool:
    done = TaskRun.objects.filter(scheduled_task__in=tasks, status=TaskRun.Status.SUCCEEDED)
    return done.values("scheduled_task").distinct().count() == len(tasks)


def runs_in_progress() -> bool:
    """Some run is still queued or running: the worker has not finished what it was sent."""
    in_progress = (TaskRun.Status.QUEUED, TaskRun.Status.RUNNING)
    return TaskRun.objects.filter(status__in=in_progress).exists()


# own_redis first: it stops after the worker and beat, not under them.
@pytest.mark.redis
def test_a_broker_restart_crashes_nothing_and_loses_no_accepted_run(
    own_redis: RedisServer, start_worker, start_beat, scratch_dir: Path
) -> None:
    log = scratch_dir / "calls.log"
    before = [recorder(f"before-{n}", log, seconds=1.5) for n in range(4)]
    after = [recorder(f"after-{n}", log) for n in range(2)]
    # Every minute: beat sends it again at each minute boundary the test lasts into.
    beat_before = recorder("beat-before", log, cron="* * * * *")
    broker = {"CELERY_BROKER_URL": own_redis.url}
    worker = start_worker(purge=False, **broker, **VISIBILITY)
    beat = start_beat(**broker)
    due_now(beat_before)

    wait_until(lambda: succeeded(beat_before), timeout=60)
    for task in before:
        send_run(task, own_redis.url)
    wait_until(lambda: "before-0" in calls(log), timeout=30)

    # The broker goes away while a run is in the function and three wait in the queue.
    own_redis.stop()
    down_for = time.monotonic() + 5
    while time.monotonic() < down_for:
        assert worker.process.poll() is None and beat.process.poll() is None
        time.sleep(0.5)
    own_redis.start()

    for task in after:
        send_run(task, own_redis.url)
    # A task added while beat runs, due at once: beat publishes through its broker again.
    beat_after = recorder("beat-after", log, cron="* * * * *")
    due_now(beat_after)
    everything = [*before, *after, beat_before, beat_after]
    wait_until(lambda: succeeded(*everything), timeout=120)
    # The worker could not acknowledge before-0 while the broker was down: Redis kept it and
    # gave it back after the visibility timeout, and the dispatcher saw it had run.
    worker.wait_for_log(
        "Task 'before-0' attempt 1 was delivered again after it had finished", timeout=60
    )

    assert worker.process.poll() is None and beat.process.poll() is None
    beat.wait_for_log(f"Sending due task {periodic_task_name(beat_after.pk)}", timeout=5)
    # Beat sends the every-minute tasks again at each minute boundary: stop it and let the worker
    # finish what it was sent, so that the calls and the runs are counted at rest (a tick sent
    # between reading the one and the other made a flaky count).
    beat.stop()
    wait_until(lambda: own_redis.is_drained() and not runs_in_progress(), timeout=60)
    ran = calls(log)
    for task in [*before, *after]:  # sent once each: ran once each
        assert ran.count(task.name) == 1, ran
        assert TaskRun.objects.filter(scheduled_task=task).count() == 1
    for task in (beat_before, beat_after):  # once per tick
        runs = TaskRun.objects.filter(scheduled_task=task)
        ticks = list(runs.values_list("scheduled_for", flat=True))
        assert ran.count(task.name) == len(ticks) == len(set(ticks)) >= 1
    assert not TaskRun.objects.exclude(status=TaskRun.Status.SUCCEEDED).exists()
    assert re.search(r"Cannot connect to redis://|Connection to broker lost", worker.log())


def close_broker_connections(broker_url: str) -> None:
    """Make RabbitMQ close every client connection of the test's virtual host."""
    from kombu import Connection

    vhost = Connection(broker_url).virtual_host or "/"
    subprocess.run(
        ["rabbitmqctl", "close_all_connections", "--vhost", vhost, "closed by the fault test"],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.rabbitmq
def test_a_broker_connection_lost_mid_run_runs_it_once_and_the_worker_carries_on(
    broker_url: str, start_worker, scratch_dir: Path
) -> None:
    log = scratch_dir / "calls.log"
    slow = recorder("slow", log, seconds=4)
    later = recorder("later", log)
    worker = start_worker()

    enqueue(slow)
    wait_until(
        lambda: (
            "slow" in calls(log)
            or TaskRun.objects.filter(scheduled_task=slow, status=TaskRun.Status.RUNNING).exists()
        ),
        timeout=30,
    )
    # RabbitMQ has no visibility timeout: it puts a consumer's unacknowledged messages back in
    # the queue the moment its connection closes, here while the run is still in the function.
    close_broker_connections(broker_url)
    worker.wait_for_log("Connection to broker lost", timeout=30)

    # The worker reconnects by itself; the run it was in finishes, and the copy RabbitMQ gave
    # back is dropped by the dispatcher because that attempt has finished.
    worker.wait_for_log(
        "Task 'slow' attempt 1 was delivered again after it had finished", timeout=60
    )
    enqueue(later)
    wait_until(lambda: succeeded(slow, later), timeout=60)
    assert calls(log) == ["slow", "later"]
    assert list(TaskRun.objects.filter(scheduled_task=slow).values_list("attempt", "status")) == [
        (1, "succeeded")
    ]
    assert worker.process.poll() is None


# --- 3. the database connection dropped ----------------------------------------------------


def terminate_other_backends(db_name: str) -> int:
    """Terminate every connection to ``db_name`` but the test's own; return how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [db_name],
        )
        return len(cursor.fetchall())


def test_a_dropped_database_connection_loses_no_outcome_and_is_logged(
    start_worker, real_database: str, scratch_dir: Path
) -> None:
    log = scratch_dir / "calls.log"
    task = recorder("db-hiccup", log, seconds=6)
    worker = start_worker()

    enqueue(task)
    # The running row is written and the function sleeps on the worker's open connection.
    wait_until(lambda: calls(log) == ["db-hiccup"], timeout=30)
    assert terminate_other_backends(real_database) >= 1

    run = wait_until(
        lambda: TaskRun.objects.filter(scheduled_task=task).exclude(status="running").first(),
        timeout=60,
    )
    assert run.status == TaskRun.Status.SUCCEEDED
    assert run.result == "db-hiccup"
    worker.wait_for_log(
        "Database error while recording task 'db-hiccup' attempt 1 as succeeded (try 1 of 5)",
        timeout=10,
    )
    assert calls(log) == ["db-hiccup"]
    assert TaskRun.objects.count() == 1


def database_url_through(proxy: TcpProxy) -> str:
    """The test database's URL, with the proxy's port in place of the server's."""
    db = connection.settings_dict
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[connection.vendor]
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"{scheme}://{db['USER']}{password}@127.0.0.1:{proxy.port}/{db['NAME']}"


def test_a_run_that_arrives_while_the_database_is_unreachable_runs_once_it_is_back(
    start_worker, real_database: str, scratch_dir: Path
) -> None:
    db = connection.settings_dict
    default_port = {"postgresql": 5432, "mysql": 3306}[connection.vendor]
    proxy = TcpProxy(int(db["PORT"] or default_port), db["HOST"] or "127.0.0.1")
    try:
        log = scratch_dir / "calls.log"
        task = recorder("db-down", log)
        # The worker reaches the database only through the proxy; the test does not.
        worker = start_worker(DATABASE_URL=database_url_through(proxy))
        proxy.cut()

        enqueue(task)
        # The dispatcher tries to reconnect (about 7.5 s), then the message is sent again
        # rather than acknowledged as done; nothing ran, nothing was recorded.
        worker.wait_for_log("was not started and is sent again in 10.0 s", timeout=60)
        assert calls(log) == []
        assert not TaskRun.objects.filter(scheduled_task=task).exists()

        proxy.restore()
        run = wait_until(
            lambda: TaskRun.objects.filter(scheduled_task=task).exclude(status="running").first(),
            timeout=90,
        )
        assert (run.status, run.attempt) == (TaskRun.Status.SUCCEEDED, 1)
        assert calls(log) == ["db-down"]
        assert TaskRun.objects.filter(scheduled_task=task).count() == 1
    finally:
        proxy.close()


# --- 4. two beats ----------------------------------------------------------------------------


def sent_ids(beat: CeleryProcess) -> list[str]:
    """Celery ids of the runs this beat sent (beat logs each message it publishes)."""
    return re.findall(r"orchestrator\.run_scheduled_task sent\. id->(\S+)", beat.log())


def dropped_ticks(worker: CeleryProcess) -> dict[str, dt.datetime]:
    """Celery id -> tick of each message the dispatcher dropped as a duplicate of its tick."""
    found = re.findall(
        r"for the tick of (\S+) already has a run; dropping this duplicate \(Celery id (\S+)\)",
        worker.log(),
    )
    return {celery_id: dt.datetime.fromisoformat(tick) for tick, celery_id in found}


def test_two_real_beats_run_each_tick_once(start_worker, start_beat, scratch_dir: Path) -> None:
    log = scratch_dir / "calls.log"
    task = recorder("two-beats", log, cron="* * * * *")
    due_now(task)  # an overdue tick too, as after a beat restart: sent as beats start
    worker = start_worker(concurrency=2)
    # django-celery-beat's scheduler: both beats send every tick (orchestrator's would elect one
    # sender), and the dispatcher's guard must turn each pair into one run.
    database_scheduler = "django_celery_beat.schedulers:DatabaseScheduler"
    beats = [start_beat(scheduler=database_scheduler), start_beat(scheduler=database_scheduler)]
    boundary = timezone.now().replace(second=0, microsecond=0) + dt.timedelta(minutes=1)

    def ticks_sent_by(beat: CeleryProcess) -> dict[str, dt.datetime]:
        """The tick each message of ``beat`` counted as, once the worker took it."""
        ran = dict(TaskRun.objects.values_list("celery_task_id", "scheduled_for"))
        dropped = dropped_ticks(worker)
        return {i: ran.get(i) or dropped[i] for i in sent_ids(beat) if i in ran or i in dropped}

    # Both beats send the first minute boundary after they started (up to a minute away).
    wait_until(lambda: all(boundary in ticks_sent_by(beat).values() for beat in beats), timeout=100)
    wait_until(lambda: finished_runs(task, 1), timeout=30)
    # Stop the beats (a later minute boundary must not send more while the counts are read) and
    # let the worker take every message they sent.
    for beat in beats:
        beat.stop()

    def every_message_taken() -> bool:
        runs = TaskRun.objects.filter(scheduled_task=task)
        taken = set(runs.values_list("celery_task_id", flat=True)) | set(dropped_ticks(worker))
        sent = {i for beat in beats for i in sent_ids(beat)}
        return sent <= taken and not runs_in_progress()

    wait_until(every_message_taken, timeout=60)
    sent = [i for beat in beats for i in sent_ids(beat)]
    runs = list(TaskRun.objects.filter(scheduled_task=task))
    dropped = dropped_ticks(worker)
    # Every message either ran or was dropped as a duplicate of its tick, never both.
    assert sorted(sent) == sorted([r.celery_task_id for r in runs] + list(dropped))
    assert len(sent) == len(set(sent)) >= 3
    # One run per tick, and the function ran once per run.
    assert len({r.scheduled_for for r in runs}) == len(runs)
    assert boundary in {r.scheduled_for for r in runs}
    assert set(dropped.values()) <= {r.scheduled_for for r in runs}
    assert {r.status for r in runs} == {"succeeded"}
    assert len(calls(log)) == len(runs)
