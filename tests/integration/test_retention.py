"""Bounded history through a real worker: the maintenance entry that beat_sync keeps prunes old
runs and deliveries while the same worker goes on dispatching."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from orchestrator.beat_sync import beat_sync
from orchestrator.dispatcher import enqueue
from orchestrator.models import Event, NotificationDelivery, TaskRun
from tests.integration.conftest import wait_until
from tests.integration.test_long_retries import send_maintenance_as_beat_would
from tests.utils import make_channel, make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

OLD_RUNS = 2500  # more than two batches


def test_the_maintenance_task_prunes_old_history_while_runs_go_on(start_worker) -> None:
    old_task = make_scheduled_task("old-history")
    live = make_scheduled_task("live", "tests.sample_tasks.noop")
    channel = make_channel()
    long_ago = timezone.now() - dt.timedelta(days=120)
    TaskRun.objects.bulk_create(
        TaskRun(
            scheduled_task=old_task,
            status=TaskRun.Status.SUCCEEDED if i % 4 else TaskRun.Status.FAILED,
            started_at=long_ago + dt.timedelta(minutes=i),
            finished_at=long_ago + dt.timedelta(minutes=i, seconds=5),
        )
        for i in range(OLD_RUNS)
    )
    latest = TaskRun.objects.filter(scheduled_task=old_task).order_by("-started_at").first()
    waiting = TaskRun.objects.create(
        scheduled_task=old_task,
        status=TaskRun.Status.RETRIED,
        started_at=long_ago,
        finished_at=long_ago,
        # A long retry held in the database, due tomorrow: kept, and not sent yet.
        next_retry_at=timezone.now() + dt.timedelta(days=1),
    )
    NotificationDelivery.objects.create(
        channel=channel,
        event=Event.FAILURE,
        status=NotificationDelivery.Status.SENT,
        created_at=timezone.now() - dt.timedelta(days=40),
    )
    assert beat_sync().created == 1  # the maintenance entry
    worker = start_worker(concurrency=2)

    for _ in range(30):
        enqueue(live, trigger="manual")
    send_maintenance_as_beat_would(worker)
    wait_until(
        lambda: (
            TaskRun.objects.filter(scheduled_task=live, status=TaskRun.Status.SUCCEEDED).count()
            == 30
        ),
        timeout=60,
        what="the live runs",
    )

    kept = set(TaskRun.objects.filter(scheduled_task=old_task).values_list("pk", flat=True))
    assert kept == {latest.pk, waiting.pk}
    assert not NotificationDelivery.objects.exists()
