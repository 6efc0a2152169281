"""The failure hooks: which signal each outcome sends, with what, and that receivers cannot
break a run."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import signals
from orchestrator.dispatcher import Attempt, run_task
from orchestrator.models import ScheduledTask, TaskRun
from tests.utils import make_run, make_scheduled_task

pytestmark = pytest.mark.django_db

SIGNALS = ("task_succeeded", "task_retrying", "task_failed", "task_recovered", "task_skipped")


@pytest.fixture
def received() -> Any:
    log: list[tuple[str, str, ScheduledTask]] = []
    handlers = {}
    for name in SIGNALS:

        def handler(sender: Any, run: TaskRun, scheduled_task: ScheduledTask, _n: str = name, **kw):
            assert sender is ScheduledTask
            log.append((_n, run.status, scheduled_task))

        handlers[name] = handler
        getattr(signals, name).connect(handler, weak=False)
    yield log
    for name, handler in handlers.items():
        getattr(signals, name).disconnect(handler)


@pytest.mark.parametrize(
    ("import_path", "fields", "sent"),
    [
        ("tests.sample_tasks.noop", {}, [("task_succeeded", "succeeded")]),
        ("tests.sample_tasks.always_fails", {"max_retries": 1}, [("task_retrying", "retried")]),
        ("tests.sample_tasks.always_fails", {"max_retries": 0}, [("task_failed", "failed")]),
        ("tests.sample_tasks.noop", {"enabled": False}, [("task_skipped", "skipped")]),
    ],
    ids=["success", "retry", "final-failure", "skipped"],
)
def test_each_outcome_sends_its_signal_with_the_run_and_the_task(
    received: list, import_path: str, fields: dict, sent: list
) -> None:
    task = make_scheduled_task("job", import_path, **fields)
    run_task(Attempt(task.pk))
    assert [(name, status) for name, status, _ in received] == sent
    assert all(t.pk == task.pk for *_, t in received)


def test_a_recovery_is_sent_after_the_success(received: list) -> None:
    task = make_scheduled_task("job", "tests.sample_tasks.noop")
    make_run(task, status=TaskRun.Status.FAILED)
    run_task(Attempt(task.pk))
    assert [name for name, *_ in received] == ["task_succeeded", "task_recovered"]


def test_a_receiver_that_raises_changes_nothing(caplog: Any) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.task_succeeded.connect(broken, weak=False)
    try:
        task = make_scheduled_task("job", "tests.sample_tasks.noop")
        outcome = run_task(Attempt(task.pk))
    finally:
        signals.task_succeeded.disconnect(broken)
    assert outcome.status == TaskRun.Status.SUCCEEDED
    assert "Receiver" in caplog.text and "receiver bug" in caplog.text
