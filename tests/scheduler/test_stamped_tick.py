"""The tick beat stamps on a message is the run's tick: the worker's clock no longer decides."""

import datetime as dt

import pytest
from django.db import connection
from freezegun import freeze_time

from orchestrator.dispatcher import run_task
from orchestrator.models import TaskRun
from orchestrator.tasks import run_scheduled_task
from tests.utils import make_scheduled_task

pytestmark = pytest.mark.django_db
TICK = dt.datetime(2026, 12, 1, 12, 1, tzinfo=dt.UTC)


def test_the_first_attempt_takes_the_stamped_tick_not_the_workers_clock():
    task = make_scheduled_task("stamped", "tests.sample_tasks.noop")
    # The message waited in the broker: the worker starts it three minutes after its tick.
    late = TICK + dt.timedelta(minutes=3, seconds=10)

    outcome = run_task(task.pk, scheduled_for=TICK, from_beat=True, now=lambda: late)

    assert outcome.run.scheduled_for == TICK
    assert outcome.run.started_at == late


def test_the_celery_task_reads_the_stamp_from_the_message():
    task = make_scheduled_task("stamped", "tests.sample_tasks.noop")
    with freeze_time(TICK + dt.timedelta(seconds=58)):
        run_scheduled_task.apply(
            args=[task.pk],
            kwargs={"scheduled_for": TICK.isoformat()},
            headers={"periodic_task_name": f"orchestrator:{task.pk}"},
        )
    assert TaskRun.objects.get().scheduled_for == TICK


def test_a_second_message_for_the_same_stamped_tick_calls_nothing():
    if not connection.features.supports_partial_indexes:
        pytest.skip("the tick guard is a partial unique index: MySQL and MariaDB have none")
    task = make_scheduled_task("stamped", "tests.sample_tasks.noop")
    first = run_task(task.pk, scheduled_for=TICK, from_beat=True)
    second = run_task(task.pk, scheduled_for=TICK, from_beat=True)
    assert first.run is not None and second.run is None
    assert TaskRun.objects.count() == 1


def test_a_message_without_a_stamp_keeps_the_workers_tick():
    task = make_scheduled_task("unstamped", "tests.sample_tasks.noop")
    # As django-celery-beat's DatabaseScheduler sends it: no scheduled_for.
    outcome = run_task(
        task.pk, from_beat=True, now=lambda: TICK + dt.timedelta(minutes=3, seconds=10)
    )
    assert outcome.run.scheduled_for == TICK + dt.timedelta(minutes=3)
