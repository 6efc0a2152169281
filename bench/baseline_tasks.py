"""What the dispatch benchmark loads into its worker (``--include bench.baseline_tasks``).

The hand-written tasks the dispatcher is compared with:

* ``bench.durable_run``: the like-for-like baseline. It issues the statements the dispatcher
  issues for a successful run: read the ScheduledTask row, insert a ``running`` history row
  before calling the function (so a run in progress, or one whose worker died, is visible),
  update it at the end.
* ``bench.baseline_run``: the least a scheduled run needs: read the row, call the function,
  insert one finished history row.

Each is a plain function too (``durable_run_once``, ``minimal_run_once``), which the in-process
table calls directly.
* A statement counter: task_prerun/task_postrun handlers wrap the database connection of the
  pool process with ``execute_wrapper`` and log one ``bench-sql`` line per task. Only this
  bench-only module connects them, so orchestrator/ carries no benchmark code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.signals import task_postrun, task_prerun

BASELINE_TASK = "bench.baseline_run"
DURABLE_TASK = "bench.durable_run"
DISPATCHER_TASK = "orchestrator.run_scheduled_task"
COUNTED_TASKS = frozenset({BASELINE_TASK, DURABLE_TASK, DISPATCHER_TASK})
LOG_MARK = "bench-sql"
_TABLE = re.compile(r'(?:FROM|INTO|UPDATE)\s+"([^"]+)"', re.IGNORECASE)

logger = logging.getLogger("bench.sql")


def minimal_run_once(scheduled_task_id: int, celery_task_id: str = "", worker: str = "") -> int:
    """Run a scheduled task the hand-written way: two statements, no policy, no signals."""
    # Imported here: the worker imports --include modules before Django's apps are ready.
    from django.utils import timezone

    from orchestrator.models import ScheduledTask, TaskRun
    from tests.sample_tasks import noop

    task = ScheduledTask.objects.get(pk=scheduled_task_id)
    started = timezone.now()
    noop(**task.kwargs)
    finished = timezone.now()
    run = TaskRun.objects.create(
        scheduled_task=task,
        status=TaskRun.Status.SUCCEEDED,
        started_at=started,
        finished_at=finished,
        duration=finished - started,
        celery_task_id=celery_task_id,
        worker=worker,
    )
    return run.pk


def durable_run_once(scheduled_task_id: int, celery_task_id: str = "", worker: str = "") -> int:
    """Run a scheduled task the hand-written way, durably: the dispatcher's three statements
    (read the row, insert a running row first, update it at the end), nothing else."""
    from django.utils import timezone

    from orchestrator.models import ScheduledTask, TaskRun
    from tests.sample_tasks import noop

    task = ScheduledTask.objects.get(pk=scheduled_task_id)
    run = TaskRun.objects.create(
        scheduled_task=task,
        status=TaskRun.Status.RUNNING,
        started_at=timezone.now(),
        celery_task_id=celery_task_id,
        worker=worker,
    )
    noop(**task.kwargs)
    run.finished_at = timezone.now()
    run.duration = run.finished_at - run.started_at
    run.status = TaskRun.Status.SUCCEEDED
    run.save(update_fields=["status", "finished_at", "duration"])
    return run.pk


@shared_task(bind=True, name=BASELINE_TASK)
def baseline_run(self: Task, scheduled_task_id: int) -> int:
    return minimal_run_once(scheduled_task_id, self.request.id or "", self.request.hostname or "")


@shared_task(bind=True, name=DURABLE_TASK)
def durable_run(self: Task, scheduled_task_id: int) -> int:
    return durable_run_once(scheduled_task_id, self.request.id or "", self.request.hostname or "")


class _Counter:
    """Counts the statements of the task running in this (single-threaded) pool process."""

    def __init__(self) -> None:
        self.count = 0
        self.kinds: list[str] = []

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        self.count += 1
        self.kinds.append(_kind(sql))
        return execute(sql, params, many, context)


def _kind(sql: str) -> str:
    """``SELECT:orchestrator_taskrun/orchestrator_scheduledtask``: the verb and the tables it
    reads from or writes to (subqueries included), to read in the log."""
    verb = sql.split(None, 1)[0].upper() if sql.strip() else "?"
    tables = list(dict.fromkeys(_TABLE.findall(sql)))
    return f"{verb}:{'/'.join(tables)}" if tables else verb


_counters: dict[str, _Counter] = {}


@task_prerun.connect
def _start_counting(sender: Task | None = None, task_id: str | None = None, **kwargs: Any) -> None:
    if getattr(sender, "name", None) not in COUNTED_TASKS or not task_id:
        return
    from django.db import connection

    counter = _Counter()
    _counters[task_id] = counter
    # The wrapper list belongs to the connection object, which survives the reconnect that
    # CONN_MAX_AGE=0 causes per task, so statements on the fresh connection are counted too.
    connection.execute_wrappers.append(counter)


@task_postrun.connect
def _stop_counting(
    sender: Task | None = None, task_id: str | None = None, state: str | None = None, **kwargs: Any
) -> None:
    counter = _counters.pop(task_id or "", None)
    if counter is None:
        return
    from django.db import connection

    if counter in connection.execute_wrappers:
        connection.execute_wrappers.remove(counter)
    logger.info(
        "%s task=%s id=%s state=%s statements=%d sql=%s",
        LOG_MARK,
        sender.name,
        task_id,
        state,
        counter.count,
        ",".join(counter.kinds),
    )


def parse_counts(log: str) -> dict[str, list[tuple[int, str]]]:
    """(statement count, statement kinds) per task name, for the tasks that ended in SUCCESS,
    from a worker's log."""
    counts: dict[str, list[tuple[int, str]]] = {}
    for line in log.splitlines():
        if LOG_MARK not in line:
            continue
        fields = dict(
            part.split("=", 1) for part in line.split(LOG_MARK, 1)[1].split() if "=" in part
        )
        if fields.get("state") != "SUCCESS":
            continue
        counts.setdefault(fields["task"], []).append(
            (int(fields["statements"]), fields.get("sql", ""))
        )
    return counts
