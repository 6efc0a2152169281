"""scheduler_status(): what the watchdog, /health/ and the dashboard read."""

import dataclasses
import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orchestrator.models import BeatProcess, SchedulerLease
from orchestrator.scheduler.lease import LEASE_NAME, Lease, ensure_row
from orchestrator.scheduler.registry import ProcessRow
from orchestrator.scheduler.status import SchedulerStatus, scheduler_status

pytestmark = pytest.mark.django_db


def test_no_scheduler_ever_ran_is_stale_with_nobody():
    status = scheduler_status()
    assert status == SchedulerStatus(
        leader=None, heartbeat_at=None, heartbeat_age_s=None, standbys=[], stale=True
    )


def test_a_running_leader_and_its_standbys():
    ensure_row()
    Lease("token-a", "beat-1:11", 10).step()
    ProcessRow("token-a", "beat-1", 11).beat("leader")
    ProcessRow("token-b", "beat-2", 22).beat("standby")
    ProcessRow("token-c", "beat-3", 33).beat("standby")

    with CaptureQueriesContext(connection) as queries:
        status = scheduler_status()

    assert len(queries) == 2
    assert status.leader == "beat-1:11"
    assert status.standbys == ["beat-2:22", "beat-3:33"]
    assert status.stale is False
    assert 0 <= status.heartbeat_age_s < 5


def test_a_silent_leader_turns_stale_after_the_stale_window(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SCHEDULER_STALE_AFTER": 30}
    ensure_row()
    Lease("token-a", "beat-1:11", 10).step()
    ProcessRow("token-b", "beat-2", 22).beat("standby")
    heartbeat = SchedulerLease.objects.get(name=LEASE_NAME).heartbeat_at

    later = scheduler_status(now=heartbeat + dt.timedelta(seconds=45))

    # The lease ran out after 10 s: nobody leads; the standby was last seen 45 s ago.
    assert later.leader is None
    assert later.heartbeat_at == heartbeat
    assert later.heartbeat_age_s == pytest.approx(45)
    assert later.stale is True
    assert later.standbys == []
    assert scheduler_status(now=heartbeat + dt.timedelta(seconds=5)).stale is False


def test_the_status_is_a_frozen_dataclass():
    status = scheduler_status()
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.leader = "x"  # type: ignore[misc]
    assert BeatProcess.objects.count() == 0
