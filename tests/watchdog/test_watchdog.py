"""A watchdog pass: one process at a time, the scheduler's health alerted once per change."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.core.management import call_command

from orchestrator import watchdog
from orchestrator.models import NotificationDelivery, SchedulerLease, WatchdogState
from orchestrator.scheduler.lease import LEASE_NAME, Lease, ensure_row
from orchestrator.watchdog import scheduler as scheduler_health
from tests.utils import make_channel

pytestmark = pytest.mark.django_db


def test_one_process_gets_the_turn_per_interval() -> None:
    assert watchdog.take_turn("worker-a", 30) is not None
    assert watchdog.take_turn("worker-b", 30) is None
    WatchdogState.objects.update(last_pass_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    assert watchdog.take_turn("worker-b", 30) is not None
    assert WatchdogState.objects.get().holder == "worker-b"


def test_a_pass_records_when_it_ran_for_the_next(settings: Any) -> None:
    report = watchdog.run_pass("worker-a")
    assert report.ran and report.missed is not None
    state = WatchdogState.objects.get()
    assert state.checked_through == state.last_pass_at
    assert watchdog.run_pass("worker-b").ran is False
    assert watchdog.run_pass("worker-b", force=True).ran is True
    assert 0 <= watchdog.last_pass_age() < 5


def stale_heartbeat() -> None:
    ensure_row()
    Lease("token-a", "beat-1:11", 10).step()
    SchedulerLease.objects.filter(name=LEASE_NAME).update(
        heartbeat_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        expires_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    )


def test_a_stale_scheduler_is_alerted_once_and_its_return_once(
    django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = []
    monkeypatch.setattr(
        "orchestrator.notifications.delivery.enqueue", lambda pk, alert: sent.append(alert)
    )
    make_channel("ops", is_default=True)
    make_channel("other")  # not a default channel: not told
    state, _ = WatchdogState.objects.get_or_create(name=watchdog.STATE_NAME)
    assert scheduler_health.check(state) == ""  # no scheduler ever ran: nothing to watch

    stale_heartbeat()
    assert scheduler_health.check(state) == "down (alerted)"
    state.refresh_from_db()
    assert scheduler_health.check(state) == "down"  # still down: no second alert
    Lease("token-b", "beat-2:22", 10).step()  # another beat takes over
    assert scheduler_health.check(state) == "back (alerted)"

    assert [a.note.split(":")[0] for a in sent] == [
        "The scheduler stopped",
        "The scheduler is back",
    ]
    assert "beat-2:22 sends the scheduled runs" in sent[1].note
    deliveries = NotificationDelivery.objects.filter(event="scheduler")
    assert {d.channel.name for d in deliveries} == {"ops"} and deliveries.count() == 2


def test_the_command_runs_one_pass(capsys: Any) -> None:
    call_command("orchestrator_watchdog")
    assert "tasks and 0 ticks checked" in capsys.readouterr().out
    assert WatchdogState.objects.get().holder.startswith("orchestrator_watchdog@")
