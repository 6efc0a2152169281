"""``manage.py beat_sync`` from two processes at once, against the same database.

Both see N scheduled tasks without PeriodicTasks. Without the sync lock (an advisory lock on
PostgreSQL, a row lock on MariaDB/MySQL) both would plan N creates (and a CrontabSchedule each, a
table with no unique constraint), and the second bulk insert would crash on PeriodicTask's unique
name once the first commits. With it, the second process plans only after the first has
committed, and finds nothing to do.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from orchestrator import beat_sync as beat_sync_module
from orchestrator.beat_sync import MAINTENANCE_NAME, NAME_PREFIX, periodic_task_name
from orchestrator.models import ScheduledTask
from tests.integration.conftest import ROOT, subprocess_env
from tests.utils import make_definition

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TASKS = 40
ROUNDS = 3
REPORT = re.compile(r"created (\d+), updated (\d+), deleted (\d+), unchanged (\d+)")


def start_sync(db_name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "django", "beat_sync"],
        env=subprocess_env(db_name, settings.CELERY_BROKER_URL),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, ...]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    match = REPORT.search(out)
    assert match, out
    return tuple(int(n) for n in match.groups())


@pytest.fixture
def tasks_without_periodic_tasks(real_database: str) -> list[ScheduledTask]:
    definition = make_definition("noop", "tests.sample_tasks.noop")
    # bulk_create sends no post_save: nothing is synced yet, as after a data import.
    return ScheduledTask.objects.bulk_create(
        ScheduledTask(
            name=f"imported-{n}", task_definition=definition, cron="*/5 * * * *", timezone="UTC"
        )
        for n in range(TASKS)
    )


def forget_sync() -> None:
    PeriodicTask.objects.filter(name__startswith=NAME_PREFIX).delete()
    CrontabSchedule.objects.all().delete()
    ScheduledTask.objects.update(periodic_task=None)


def test_two_processes_syncing_at_once_create_each_row_once(
    real_database: str, tasks_without_periodic_tasks: list[ScheduledTask]
) -> None:
    expected_names = {periodic_task_name(t.pk) for t in tasks_without_periodic_tasks}
    for _ in range(ROUNDS):
        forget_sync()
        first, second = start_sync(real_database), start_sync(real_database)
        reports = sorted([finish(first), finish(second)])

        # One process did the work; the other waited for it and found nothing left to do.
        assert reports == [(0, 0, 0, TASKS + 1), (TASKS + 1, 0, 0, 0)]
        names = list(
            PeriodicTask.objects.filter(name__startswith=NAME_PREFIX).values_list("name", flat=True)
        )
        assert sorted(names) == sorted(expected_names | {MAINTENANCE_NAME})
        # One crontab per schedule: the tasks' and the maintenance entry's.
        assert sorted(CrontabSchedule.objects.values_list("minute", flat=True)) == ["*", "*/5"]
        linked = ScheduledTask.objects.filter(periodic_task__isnull=False).count()
        assert linked == TASKS


def test_a_sync_waits_for_the_lock_another_session_holds(
    real_database: str, tasks_without_periodic_tasks: list[ScheduledTask]
) -> None:
    # On a fresh database: MariaDB's lock row does not exist yet, and must be made to lock.
    PeriodicTasks.objects.all().delete()
    with transaction.atomic():
        beat_sync_module._lock()  # held by this session until the block ends
        process = start_sync(real_database)
        time.sleep(3)  # ample for an unblocked sync of 40 rows (well under a second)
        assert process.poll() is None
        assert not PeriodicTask.objects.filter(name__startswith=NAME_PREFIX).exists()
    assert finish(process) == (TASKS + 1, 0, 0, 0)
