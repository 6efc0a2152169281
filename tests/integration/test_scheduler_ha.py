"""Three beat replicas, the leader killed with SIGKILL every minute: every tick runs exactly once.

A real worker, Redis and PostgreSQL; the beats are real ``celery beat`` processes with
orchestrator's scheduler. Each minute the process holding the lease is killed at a different
moment after the tick (just after it, while it may be between publishing and writing
``last_run_at``, and later in the minute), and a replacement starts so that three keep running.

``ORCHESTRATOR_HA_MINUTES`` (default 5) shortens it: the MariaDB leg of CI kills one leader, which
proves the lease there without the main leg's six minutes again.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections import Counter

import pytest
from django.utils import timezone

from orchestrator.models import SchedulerLease, TaskRun
from orchestrator.scheduler.lease import LEASE_NAME
from tests.integration.conftest import wait_until
from tests.utils import make_definition, make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
MINUTE = dt.timedelta(minutes=1)
# Seconds after each tick at which that minute's leader is killed.
KILL_OFFSETS = (0.3, 20.0, 1.5, 40.0, 5.0)[: int(os.environ.get("ORCHESTRATOR_HA_MINUTES", "5"))]
# SCHEDULER_LEASE_SECONDS (10) plus a wake-up, with room for a loaded two-core machine.
TAKEOVER_LIMIT = 25.0


def lease() -> SchedulerLease | None:
    return SchedulerLease.objects.filter(name=LEASE_NAME).first()


def test_three_replicas_with_the_leader_killed_every_minute_run_every_tick_once(
    start_worker, start_beat
) -> None:
    definition = make_definition()
    tasks = [make_scheduled_task(f"ha-{i}", definition=definition) for i in range(4)]
    worker = start_worker(concurrency=2)
    beats = [start_beat() for _ in range(3)]
    wait_until(lambda: (row := lease()) is not None and row.owner, timeout=30, what="a leader")

    first_tick = timezone.now().replace(second=0, microsecond=0) + MINUTE
    takeovers: list[float] = []
    for minute, offset in enumerate(KILL_OFFSETS):
        kill_at = first_tick + minute * MINUTE + dt.timedelta(seconds=offset)
        time.sleep(max(0.0, (kill_at - timezone.now()).total_seconds()))
        row = lease()
        assert row is not None
        leader = next(b for b in beats if row.holder.endswith(f":{b.process.pid}"))
        leader.kill(signal.SIGKILL)
        killed = time.monotonic()
        beats.remove(leader)
        beats.append(start_beat())
        new = wait_until(
            lambda old=row.term: (
                (current := lease()) is not None and current.term > old and current
            ),
            timeout=60,
            interval=0.2,
            what="a standby to take the lease",
        )
        takeovers.append(time.monotonic() - killed)
        assert new.owner != row.owner

    last_tick = first_tick + len(KILL_OFFSETS) * MINUTE
    expected = [first_tick + k * MINUTE for k in range(len(KILL_OFFSETS) + 1)]
    wait_until(
        lambda: (
            TaskRun.objects.filter(scheduled_for=last_tick, status="succeeded").count()
            >= len(tasks)
        ),
        timeout=(last_tick - timezone.now()).total_seconds() + 60,
        interval=1.0,
        what="the runs of the last tick",
    )
    time.sleep(3)  # a late duplicate would show up now

    runs = TaskRun.objects.filter(scheduled_for__gte=first_tick, scheduled_for__lte=last_tick)
    per_tick = Counter(runs.values_list("scheduled_task_id", "scheduled_for"))
    assert per_tick == Counter({(t.pk, tick): 1 for t in tasks for tick in expected})
    assert set(runs.values_list("status", "attempt")) == {("succeeded", 1)}
    assert max(takeovers) <= TAKEOVER_LIMIT, takeovers
    # Copies sent by a dying leader and again by its successor were dropped by the tick guard.
    duplicates = worker.log().count("already has a run; dropping this duplicate")
    print(f"takeovers (s): {[round(t, 1) for t in takeovers]}; duplicates dropped: {duplicates}")
