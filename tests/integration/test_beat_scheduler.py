"""Real ``celery beat`` reading what beat_sync wrote, with either scheduler.

The first test runs orchestrator's scheduler and a real worker: the synced PeriodicTask becomes a
broker message that the dispatcher runs. django-celery-beat's DatabaseScheduler keeps working
with the same rows: the others drive it, in a real process and in-process, as beat's loop does.
"""

from __future__ import annotations

import datetime as dt

import pytest
from celery.schedules import crontab
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from django_celery_beat.models import PeriodicTask, PeriodicTasks
from django_celery_beat.schedulers import DatabaseScheduler

from orchestrator.beat_sync import periodic_task_name
from orchestrator.models import TaskRun
from orchestrator.routing import native_priority
from tests.celery_app import app
from tests.integration.conftest import wait_until
from tests.utils import make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_beat_sends_a_synced_entry_and_the_worker_runs_it(start_worker, start_beat) -> None:
    task = make_scheduled_task(
        "beat-add", "tests.sample_tasks.add", cron="* * * * *", kwargs={"a": 2, "b": 3}
    )
    periodic = PeriodicTask.objects.get(name=periodic_task_name(task.pk))
    # As if it last ran two minutes ago: the current minute is due now, not a minute from now.
    PeriodicTask.objects.filter(pk=periodic.pk).update(
        last_run_at=timezone.now() - dt.timedelta(minutes=2)
    )
    start_worker()
    beat = start_beat()

    run = wait_until(
        lambda: TaskRun.objects.filter(
            scheduled_task=task, status=TaskRun.Status.SUCCEEDED
        ).first(),
        timeout=30,
    )

    assert (run.trigger, run.attempt, run.result) == ("schedule", 1, 5)
    # Beat stamped the message with its tick: the start of a minute, at or before the run.
    assert run.scheduled_for is not None
    assert (run.scheduled_for.second, run.scheduled_for.microsecond) == (0, 0)
    assert run.scheduled_for <= run.started_at
    beat.wait_for_log(f"Sending due task {periodic.name} (orchestrator.run_scheduled_task)")

    # An admin edit while beat runs: saved, synced on commit, and noticed by beat.
    task.refresh_from_db()
    task.priority = 7
    task.full_clean()
    task.save()
    # In the broker's direction: 2 on Redis (9 - 7), 7 on RabbitMQ.
    assert PeriodicTask.objects.get(pk=periodic.pk).priority == native_priority(7)
    beat.wait_for_log("schedule changed: reloaded 1 entries", timeout=20)


def test_database_scheduler_still_serves_the_synced_rows(start_worker, start_beat) -> None:
    task = make_scheduled_task("dcb-add", "tests.sample_tasks.add", kwargs={"a": 1, "b": 1})
    PeriodicTask.objects.filter(name=periodic_task_name(task.pk)).update(
        last_run_at=timezone.now() - dt.timedelta(minutes=2)
    )
    start_worker()
    start_beat(scheduler="django_celery_beat.schedulers:DatabaseScheduler")

    run = wait_until(
        lambda: TaskRun.objects.filter(
            scheduled_task=task, status=TaskRun.Status.SUCCEEDED
        ).first(),
        timeout=30,
    )

    # No tick in the message: the worker places the run in its tick by its own clock.
    assert run.result == 2
    assert run.scheduled_for is not None
    assert run.scheduled_for <= run.started_at


@override_settings(ORCHESTRATOR={**settings.ORCHESTRATOR, "BROKER_TRANSPORT": "redis"})
def test_an_admin_edit_reaches_the_periodic_task_and_the_scheduler() -> None:
    task = make_scheduled_task("report", "tests.sample_tasks.noop", cron="*/5 * * * *")
    scheduler = DatabaseScheduler(app=app, lazy=True)
    name = periodic_task_name(task.pk)
    assert scheduler.schedule[name].options == {"headers": {"periodic_task_name": name}}
    scheduler.schedule  # noqa: B018  (a second tick: beat now watches for changes)
    changes_before = PeriodicTasks.last_change()

    task.refresh_from_db()
    task.cron = "30 */2 * * mon-fri"
    task.timezone = "Europe/Paris"
    task.priority = 9
    task.queue = "reports"
    task.expires = 120
    task.full_clean()
    task.save()

    periodic = PeriodicTask.objects.select_related("crontab").get(name=name)
    assert (periodic.queue, periodic.priority, periodic.expire_seconds) == ("reports", 0, 120)
    schedule = periodic.crontab
    assert (schedule.minute, schedule.hour, schedule.day_of_week) == ("30", "*/2", "mon-fri")
    assert str(schedule.timezone) == "Europe/Paris"
    assert PeriodicTasks.last_change() > changes_before

    assert scheduler.schedule_changed()
    entry = DatabaseScheduler(app=app, lazy=True).schedule[name]
    assert entry.task == "orchestrator.run_scheduled_task"
    assert entry.args == [task.pk]
    assert entry.options["queue"] == "reports"
    assert entry.options["priority"] == 0  # Redis serves 0 first
    assert entry.options["expires"] == 120
    assert isinstance(entry.schedule, crontab)
    assert entry.schedule.minute == {30}
    assert entry.schedule.day_of_week == {1, 2, 3, 4, 5}


def test_disabling_a_task_in_the_admin_removes_it_from_the_schedule() -> None:
    task = make_scheduled_task("nightly", "tests.sample_tasks.noop")
    name = periodic_task_name(task.pk)
    assert name in DatabaseScheduler(app=app, lazy=True).schedule

    task.enabled = False
    task.full_clean()
    task.save()

    assert PeriodicTask.objects.get(name=name).enabled is False
    assert name not in DatabaseScheduler(app=app, lazy=True).schedule
