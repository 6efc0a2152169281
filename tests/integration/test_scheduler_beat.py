"""orchestrator's scheduler in a real ``celery beat``, with a real worker, Redis and PostgreSQL.

Every assertion reads what the worker recorded (TaskRun rows, with the tick beat stamped) or what
beat logged.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import signal
import time

import pytest
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from orchestrator.beat_sync import periodic_task_name
from orchestrator.models import ScheduledTask, SchedulerLease, TaskRun
from tests.integration.conftest import wait_until
from tests.utils import make_definition, make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
YEARLY = "0 0 1 1 *"  # the task's own entry stays out of the way


def next_minute(after: dt.datetime) -> dt.datetime:
    return after.replace(second=0, microsecond=0) + MINUTE


def sleep_until(when: dt.datetime) -> None:
    time.sleep(max(0.0, (when - timezone.now()).total_seconds()))


def ticks_of(task: ScheduledTask) -> list[dt.datetime]:
    return sorted(
        TaskRun.objects.filter(scheduled_task=task).values_list("scheduled_for", flat=True)
    )


def test_every_minute_schedules_are_all_sent_in_the_minute_they_fall_due(
    start_worker, start_beat
) -> None:
    definition = make_definition()
    tasks = [make_scheduled_task(f"minute-{i:03d}", definition=definition) for i in range(200)]
    start_worker(concurrency=2)
    beat = start_beat()
    beat.wait_for_log("took the lease")
    tick = next_minute(timezone.now() + dt.timedelta(seconds=3))

    # An admin edit while beat runs: it reaches beat as one reloaded entry, not a full reload.
    edited = tasks[0]
    edited.queue = "celery"
    edited.full_clean()
    edited.save()
    beat.wait_for_log("schedule changed: reloaded 1 entries", timeout=20)

    runs = wait_until(
        lambda: (
            list(TaskRun.objects.filter(scheduled_for=tick, status=TaskRun.Status.SUCCEEDED))
            if TaskRun.objects.filter(scheduled_for=tick, status="succeeded").count() >= 200
            else None
        ),
        timeout=(tick - timezone.now()).total_seconds() + 90,
        interval=1.0,
        what="a run of each of the 200 tasks for the tick",
    )

    assert sorted(run.scheduled_task_id for run in runs) == sorted(t.pk for t in tasks)
    log = beat.log()
    # One pass sent the 200 due messages (and the maintenance entry's), right after the tick.
    passes = [int(n) for n, m in re.findall(r"sent (\d+) of (\d+) due messages", log) if n == m]
    assert 201 in passes, log[-3000:]
    assert log.count("(full load,") == 1
    assert all(run.started_at - tick < MINUTE for run in runs)
    assert set(
        PeriodicTask.objects.filter(name__in=[periodic_task_name(t.pk) for t in tasks]).values_list(
            "last_run_at", flat=True
        )
    ) == {tick}


def test_after_a_restart_each_catch_up_policy_sends_what_it_promises(
    start_worker, start_beat
) -> None:
    # Hourly schedules: the outage is written into last_run_at (the scheduler's only memory of
    # the past) instead of waited out, so three missed ticks take seconds, not three hours.
    now = timezone.now()
    if now.minute == 59 and now.second > 40:
        sleep_until(next_minute(now) + dt.timedelta(seconds=1))
    definition = make_definition()
    policies = {
        "skip": make_scheduled_task(
            "hourly-skip", definition=definition, cron="0 * * * *", catch_up="skip"
        ),
        "once": make_scheduled_task("hourly-once", definition=definition, cron="0 * * * *"),
        "all": make_scheduled_task(
            "hourly-all", definition=definition, cron="0 * * * *", catch_up="all"
        ),
        "all-2": make_scheduled_task(
            "hourly-all-2",
            definition=definition,
            cron="0 * * * *",
            catch_up="all",
            catch_up_limit=2,
        ),
    }
    start_worker()
    first = start_beat()
    first.wait_for_log("took the lease")
    first.stop()
    assert "released the lease" in first.log()

    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    PeriodicTask.objects.filter(
        name__in=[periodic_task_name(t.pk) for t in policies.values()]
    ).update(last_run_at=hour - 3 * HOUR)  # beat last sent the tick of three hours ago
    second = start_beat()
    second.wait_for_log("took the lease")

    expected = {
        "skip": [],
        "once": [hour],
        "all": [hour - 2 * HOUR, hour - HOUR, hour],
        "all-2": [hour - HOUR, hour],
    }
    wait_until(
        lambda: all(len(ticks_of(policies[k])) >= len(v) for k, v in expected.items()),
        timeout=30,
        what="the catch-up runs",
    )
    time.sleep(3)  # nothing more follows
    assert {name: ticks_of(task) for name, task in policies.items()} == expected
    assert set(
        PeriodicTask.objects.filter(
            name__in=[periodic_task_name(t.pk) for t in policies.values()]
        ).values_list("last_run_at", flat=True)
    ) == {hour}
    assert "catch-up skip sends 0" in second.log()


def test_every_schedule_kind_of_django_celery_beat_is_served(start_worker, start_beat) -> None:
    definition = make_definition()
    owners = {
        kind: make_scheduled_task(f"kind-{kind}", definition=definition, cron=YEARLY)
        for kind in ("interval", "clocked", "start", "expires", "solar")
    }
    start_worker(concurrency=2)
    beat = start_beat()
    beat.wait_for_log("took the lease")

    # Added while beat runs, with times counted from now: beat reads them at its next poll.
    now = timezone.now().replace(microsecond=0)
    clocked_at = now + dt.timedelta(seconds=6)
    start_at = now + dt.timedelta(seconds=8)
    expires_at = now + dt.timedelta(seconds=12)

    def periodic(kind: str, **schedule: object) -> PeriodicTask:
        return PeriodicTask.objects.create(
            name=f"kind:{kind}",
            task="orchestrator.run_scheduled_task",
            args=json.dumps([owners[kind].pk]),
            **schedule,
        )

    every_4s = IntervalSchedule.objects.create(every=4, period=IntervalSchedule.SECONDS)
    every_3s = IntervalSchedule.objects.create(every=3, period=IntervalSchedule.SECONDS)
    periodic("interval", interval=every_4s)
    clocked = periodic(
        "clocked", clocked=ClockedSchedule.objects.create(clocked_time=clocked_at), one_off=True
    )
    periodic("start", interval=every_3s, start_time=start_at)
    expiring = periodic("expires", interval=every_3s, expires=expires_at)
    sunrise = SolarSchedule.objects.create(event="sunrise", latitude=48.8566, longitude=2.3522)
    periodic("solar", solar=sunrise, last_run_at=now - dt.timedelta(days=2))

    wait_until(
        lambda: (
            timezone.now() > expires_at + dt.timedelta(seconds=4)
            and len(ticks_of(owners["start"])) >= 3
        ),
        timeout=90,
        what="the start-time entry to run three times, after the expiry",
    )
    time.sleep(2)

    # Interval: every 4 s from the previous tick (a late first look sends the latest tick once).
    interval_ticks = ticks_of(owners["interval"])
    assert len(interval_ticks) >= 3
    assert {b - a for a, b in itertools.pairwise(interval_ticks)} == {dt.timedelta(seconds=4)}
    # Clocked, one-off: once, at its time, then disabled.
    assert ticks_of(owners["clocked"]) == [clocked_at]
    clocked.refresh_from_db()
    assert clocked.enabled is False
    # Start time: nothing before it, then every 3 s from it.
    start_ticks = ticks_of(owners["start"])
    assert start_ticks[0] == start_at
    assert {b - a for a, b in itertools.pairwise(start_ticks)} == {dt.timedelta(seconds=3)}
    # Expires: nothing at or after it, then disabled.
    expires_ticks = ticks_of(owners["expires"])
    assert expires_ticks and all(tick < expires_at for tick in expires_ticks)
    expiring.refresh_from_db()
    assert expiring.enabled is False
    # Two sunrises passed since its last run: one run, for the latest, as django-celery-beat.
    (solar_tick,) = ticks_of(owners["solar"])
    assert now - dt.timedelta(days=1) < solar_tick <= timezone.now()
    # The new rows came in through reloads of what changed; the schedule was read whole once.
    log = beat.log()
    assert "schedule changed: reloaded" in log and log.count("(full load,") == 1


def test_a_sigterm_while_beat_waits_on_the_database_still_hands_the_lease_over(
    start_beat,
) -> None:
    # Beat's SIGTERM handler interrupts whatever the wake-up was doing. Its close() used to run
    # statements right there, which waited for ever on psycopg's lock held by the interrupted
    # one: the process was SIGKILLed with the lease held, and a standby waited it out.
    beat = start_beat()
    beat.wait_for_log("took the lease")
    other = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:
            table = other.ops.quote_name(SchedulerLease._meta.db_table)
            cursor.execute(f"SELECT * FROM {table} FOR UPDATE")
            time.sleep(2.5)  # the leader renews at every poll (1 s here): now it waits on the row
            beat.kill(signal.SIGTERM)
            time.sleep(1)
        other.commit()
    finally:
        other.close()
    beat.process.wait(timeout=10)
    assert beat.process.returncode == 0
    assert "released the lease" in beat.log()
