"""Each run's own log through a real worker: two tasks running at once in one process.

A worker with the threads pool and two slots runs two chatty tasks side by side; each waits
until the other has started before it logs and prints, so their lines interleave in time.
Each run's log must hold its own lines and none of the other's, and the worker's own log must
still show every line of both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.celery_app  # noqa: F401  (makes the test project's app current for enqueue())
from orchestrator.dispatcher import enqueue
from orchestrator.models import TaskRun
from tests.integration.conftest import wait_until
from tests.utils import make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LINES = 20


def test_two_tasks_in_one_threaded_worker_each_keep_only_their_own_log(
    start_worker, scratch_dir: Path
) -> None:
    barrier = scratch_dir / "go"
    tasks = {
        label: make_scheduled_task(
            f"chatty-{label}",
            "tests.sample_tasks.chatty_in_step",
            kwargs={"label": label, "barrier_file": str(barrier), "lines": LINES},
        )
        for label in ("alpha", "beta")
    }
    worker = start_worker(pool="threads", concurrency=2)

    for task in tasks.values():
        enqueue(task, trigger="manual")
    # Both are running in the one worker process before either goes on.
    wait_until(
        lambda: all(Path(f"{barrier}.{label}").exists() for label in tasks) or None, timeout=30
    )
    barrier.write_text("go")
    runs = {
        label: wait_until(
            lambda task=task: TaskRun.objects.filter(
                scheduled_task=task, status=TaskRun.Status.SUCCEEDED
            ).first(),
            timeout=60,
        )
        for label, task in tasks.items()
    }

    for label, other in (("alpha", "beta"), ("beta", "alpha")):
        log = runs[label].log
        assert f"INFO tests.sample_tasks.step: {label} started" in log
        assert log.count(f"{label} line") == LINES
        assert log.count(f"{label} printed") == LINES
        assert other not in log, f"{other}'s lines leaked into {label}'s log"
    # One process ran both (the threads pool), and the worker's own log still has every line.
    assert len({run.worker for run in runs.values()}) == 1
    worker_log = worker.log()
    for label in tasks:
        assert worker_log.count(f"{label} line") == LINES
        assert worker_log.count(f"{label} printed") == LINES
