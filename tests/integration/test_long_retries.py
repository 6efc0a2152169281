"""Long retry delays through a real worker: held in the database, sent by the maintenance task.

The worker runs with ``MAX_BROKER_COUNTDOWN`` at 2 s, so an 8 s retry is "longer than the broker
may hold": it must not become an ETA message, must show in the history with its due time, and
must be sent by the maintenance entry that beat_sync keeps. The test sends that entry's message
itself, built from the PeriodicTask row as beat builds it, instead of waiting for beat's minute.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import formats, timezone
from django_celery_beat.schedulers import DatabaseScheduler

from orchestrator.beat_sync import MAINTENANCE_NAME, beat_sync
from orchestrator.dispatcher import enqueue
from orchestrator.maintenance import STUCK
from orchestrator.models import TaskRun
from tests.celery_app import app
from tests.integration.conftest import CeleryProcess, wait_until
from tests.integration.test_worker import finished_runs
from tests.utils import make_run, make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

RETRY_DELAY = 8


def send_maintenance_as_beat_would(worker: CeleryProcess) -> None:
    """Send the synced maintenance entry's message and wait until the worker has run it."""
    entry = DatabaseScheduler(app=app, lazy=True).schedule[MAINTENANCE_NAME]
    result = app.send_task(entry.task, entry.args, entry.kwargs, **entry.options)
    worker.wait_for_log(f"Task orchestrator.run_maintenance[{result.id}] succeeded", timeout=20)


def test_a_long_retry_waits_in_the_database_until_the_maintenance_task_sends_it(
    start_worker, admin_client, scratch_dir: Path
) -> None:
    task = make_scheduled_task(
        "slow-flaky",
        "tests.sample_tasks.flaky",
        kwargs={"counter_file": str(scratch_dir / "calls"), "failures": 1},
        max_retries=1,
        retry_backoff="fixed",
        retry_delay=RETRY_DELAY,
    )
    # The same pass marks a run left "running" past its time limit as lost.
    limited = make_scheduled_task("limited", "tests.sample_tasks.noop", time_limit=1)
    stuck = make_run(
        limited,
        status=TaskRun.Status.RUNNING,
        started_at=timezone.now() - dt.timedelta(minutes=5),
        time_limit=limited.time_limit,
    )
    assert beat_sync().created == 1  # the maintenance entry; the tasks synced when saved
    worker = start_worker(ORCHESTRATOR_MAX_BROKER_COUNTDOWN="2")

    enqueue(task, trigger="manual")
    first = wait_until(
        lambda: TaskRun.objects.filter(scheduled_task=task, status=TaskRun.Status.RETRIED).first(),
        timeout=20,
    )
    worker.wait_for_log("the maintenance task will send it then")

    # Held: due in 8 s, never handed to the broker.
    assert first.retry_sent_at is None
    assert first.next_retry_at - first.finished_at == dt.timedelta(seconds=RETRY_DELAY)
    assert "Retry in" not in worker.log()
    # The history shows it with its due time, on the dashboard and in the admin.
    page = admin_client.get(reverse("orchestrator:task-detail", args=[task.pk])).content.decode()
    assert f'next attempt due <time datetime="{first.next_retry_at.isoformat()}">' in page
    admin_page = admin_client.get(
        reverse("admin:orchestrator_taskrun_change", args=[first.pk])
    ).content.decode()
    assert formats.localize(timezone.template_localtime(first.next_retry_at)) in admin_page

    # A pass well before it is due leaves it alone (it sends at most 2 s early here).
    assert timezone.now() < first.next_retry_at - dt.timedelta(seconds=3)
    send_maintenance_as_beat_would(worker)
    first.refresh_from_db()
    assert first.retry_sent_at is None
    stuck.refresh_from_db()
    assert (stuck.status, stuck.error_type) == (TaskRun.Status.LOST, STUCK)

    wait_until(lambda: timezone.now() >= first.next_retry_at - dt.timedelta(seconds=1), timeout=10)
    send_maintenance_as_beat_would(worker)
    runs = wait_until(lambda: finished_runs(task.pk, 2), timeout=20)

    assert [(r.attempt, r.status) for r in runs] == [(1, "retried"), (2, "succeeded")]
    first = runs[0]
    assert first.retry_sent_at is not None
    assert first.finished_at < first.retry_sent_at <= runs[1].started_at
    assert runs[1].started_at >= first.next_retry_at  # the countdown covered the rest
    assert runs[1].celery_task_id == first.celery_task_id
    assert {r.trigger for r in runs} == {"manual"}
    assert "Sent the retry of task 'slow-flaky' (attempt 2)" in worker.log()
    # A later pass finds nothing more to send (its log is complete once it has succeeded).
    send_maintenance_as_beat_would(worker)
    assert worker.log().count("Sent the retry of task") == 1
