"""The dispatcher behind a real Celery worker, a real broker (Redis or RabbitMQ) and PostgreSQL.

Each test starts its own worker subprocess (see conftest.py) and drives it only through the
broker, as beat and the admin do; assertions read the run history the worker wrote.
"""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import pytest

import tests.celery_app  # noqa: F401  (makes the test project's app current for enqueue())
from orchestrator.dispatcher import enqueue
from orchestrator.models import TaskRun
from orchestrator.tasks import run_scheduled_task
from tests.integration.conftest import wait_until
from tests.utils import make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def finished_runs(task_id: int, count: int) -> list[TaskRun] | None:
    """The task's runs by attempt once ``count`` of them exist and none is still running."""
    runs = list(TaskRun.objects.filter(scheduled_task_id=task_id).order_by("attempt", "id"))
    if len(runs) >= count and all(r.status != TaskRun.Status.RUNNING for r in runs):
        return runs
    return None


def test_a_flaky_task_is_retried_through_the_broker_then_succeeds(
    start_worker, scratch_dir: Path
) -> None:
    counter = scratch_dir / "calls"
    task = make_scheduled_task(
        "flaky",
        "tests.sample_tasks.flaky",
        kwargs={"counter_file": str(counter), "failures": 2},
        max_retries=3,
        retry_backoff="fixed",
        retry_delay=1,
    )
    worker = start_worker()

    enqueue(task, trigger="manual")
    runs = wait_until(lambda: finished_runs(task.pk, 3), timeout=30)

    assert [(r.attempt, r.status) for r in runs] == [
        (1, "retried"),
        (2, "retried"),
        (3, "succeeded"),
    ]
    assert counter.read_text() == "3"  # one call per attempt, one row per call
    assert runs[2].result == "succeeded after 3 calls"
    assert [r.error_type for r in runs[:2]] == ["ConnectionError", "ConnectionError"]
    # The configured delay separates the attempts: the broker held the retry, not the worker.
    for earlier, later in itertools.pairwise(runs):
        assert earlier.next_retry_at is not None
        assert (later.started_at - earlier.started_at).total_seconds() >= 1.0
        assert later.started_at >= earlier.next_retry_at
        assert earlier.retry_sent_at is not None
        assert earlier.finished_at <= earlier.retry_sent_at <= later.started_at
    assert len({r.celery_task_id for r in runs}) == 1
    assert {(r.trigger, r.queue, r.max_attempts) for r in runs} == {("manual", "celery", 4)}
    assert all(r.worker.startswith("w") for r in runs)
    assert "Retry in 1.0s" in worker.log()


def test_an_always_failing_task_fails_after_max_retries_plus_one_attempts(start_worker) -> None:
    task = make_scheduled_task(
        "doomed",
        "tests.sample_tasks.always_fails",
        kwargs={"message": "upstream is gone"},
        max_retries=2,
        retry_backoff="fixed",
        retry_delay=0,
    )
    start_worker()

    enqueue(task)
    runs = wait_until(lambda: finished_runs(task.pk, 3), timeout=30)
    # Give a wrongly sent fourth attempt the time to show up before counting.
    wait_until(lambda: not TaskRun.objects.filter(status=TaskRun.Status.RUNNING).exists())

    runs = list(TaskRun.objects.filter(scheduled_task=task).order_by("attempt"))
    assert [(r.attempt, r.status) for r in runs] == [
        (1, "retried"),
        (2, "retried"),
        (3, "failed"),
    ]
    assert runs[-1].error_message == "upstream is gone"
    assert runs[-1].next_retry_at is None
    assert all(r.max_attempts == 3 for r in runs)


def test_the_broker_serves_urgent_runs_before_low_ones(start_worker, scratch_dir: Path) -> None:
    log = scratch_dir / "order.log"

    def recorder(label: str, priority: int | None, seconds: float = 0.0):
        return make_scheduled_task(
            label,
            "tests.sample_tasks.record",
            kwargs={"log_file": str(log), "label": label, "seconds": seconds},
            priority=priority,
        )

    blocker = recorder("blocker", None, seconds=2.0)
    lows = [recorder(f"low{n}", 0) for n in range(3)]
    highs = [recorder(f"high{n}", 9) for n in range(3)]
    start_worker(concurrency=1)

    enqueue(blocker)
    # The only worker slot is busy before anything else is queued.
    wait_until(lambda: log.exists() and "blocker" in log.read_text(), timeout=20)
    for task in lows + highs:
        enqueue(task)

    order = wait_until(
        lambda: (lines := log.read_text().split()) and len(lines) == 7 and lines, timeout=30
    )
    assert order[0] == "blocker"
    assert set(order[1:4]) == {"high0", "high1", "high2"}, order
    assert set(order[4:]) == {"low0", "low1", "low2"}, order
    runs = TaskRun.objects.exclude(scheduled_task=blocker)
    assert {(r.scheduled_task.name[:3], r.priority) for r in runs} == {("low", 0), ("hig", 9)}


def test_an_attempt_killed_at_its_hard_time_limit_is_recorded_lost(start_worker) -> None:
    task = make_scheduled_task(
        "hangs", "tests.sample_tasks.sleep", kwargs={"seconds": 30}, time_limit=1, max_retries=0
    )
    worker = start_worker()

    enqueue(task)
    run = wait_until(
        lambda: TaskRun.objects.filter(scheduled_task=task, status=TaskRun.Status.LOST).first(),
        timeout=20,
    )

    # The worker's main process recorded it: the task body was killed before it could.
    assert run.error_type == "TimeLimitExceeded"
    assert "hard time limit" in run.error_message
    assert run.finished_at is not None
    assert run.duration.total_seconds() < 10
    # Celery's own line may reach the log just after our handler recorded the run.
    worker.wait_for_log("Hard time limit (1s) exceeded", timeout=10)


def test_an_attempt_whose_worker_process_dies_runs_again_and_the_dead_row_is_lost(
    start_worker, scratch_dir: Path
) -> None:
    pid_file = scratch_dir / "pid"
    task = make_scheduled_task(
        "fragile",
        "tests.sample_tasks.hang_once",
        kwargs={"counter_file": str(scratch_dir / "calls"), "pid_file": str(pid_file)},
        max_retries=0,
    )
    start_worker()

    enqueue(task)
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=20))
    os.kill(pid, signal.SIGKILL)  # the pool process running the attempt, not the worker
    runs = wait_until(lambda: finished_runs(task.pk, 2), timeout=30)

    # reject_on_worker_lost put the message back; the redelivered attempt ran to the end.
    assert [(r.attempt, r.status) for r in runs] == [(1, "lost"), (1, "succeeded")]
    assert runs[0].error_type == "WorkerLost"
    assert runs[0].celery_task_id == runs[1].celery_task_id
    assert runs[1].result == "call 2"


def test_two_beats_sending_the_same_tick_run_the_function_once(
    start_worker, scratch_dir: Path
) -> None:
    log = scratch_dir / "calls.log"
    task = make_scheduled_task(
        "hourly",
        "tests.sample_tasks.record",
        cron="0 * * * *",
        kwargs={"log_file": str(log), "label": "ran"},
    )
    worker = start_worker(concurrency=2)

    # What two beats (or one beat restarted mid-tick) send: args [id] and beat's header.
    for _ in range(2):
        run_scheduled_task.apply_async(
            args=[task.pk], headers={"periodic_task_name": f"orchestrator:{task.pk}"}
        )
    worker.wait_for_log("dropping this duplicate", timeout=20)
    run = wait_until(lambda: finished_runs(task.pk, 1), timeout=20)[0]

    assert log.read_text() == "ran\n"
    assert TaskRun.objects.filter(scheduled_task=task).count() == 1
    assert (run.status, run.trigger) == ("succeeded", "schedule")
    assert run.scheduled_for is not None and run.scheduled_for.minute == 0
