"""The lease: one holder at a time, expiry judged by the database's clock, fencing by the
holder's own monotonic clock."""

import datetime as dt
from unittest import mock

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from orchestrator.models import SchedulerLease
from orchestrator.scheduler.lease import LEASE_NAME, DatabaseNow, Lease, ensure_row

pytestmark = pytest.mark.django_db


class Mono:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_lease(owner: str, mono: Mono | None = None, seconds: float = 10) -> Lease:
    return Lease(owner, f"host-{owner}:1", seconds, clock=mono or Mono())


def expire_in_database() -> None:
    SchedulerLease.objects.filter(name=LEASE_NAME).update(
        expires_at=DatabaseNow() - dt.timedelta(seconds=1)
    )


@pytest.fixture(autouse=True)
def lease_row() -> None:
    ensure_row()


def test_the_first_process_takes_the_lease_and_the_second_waits():
    first, second = make_lease("a"), make_lease("b")

    assert first.step() is True
    assert second.step() is False
    row = SchedulerLease.objects.get(name=LEASE_NAME)
    assert (row.owner, row.holder, row.term) == ("a", "host-a:1", 1)
    assert row.expires_at > row.heartbeat_at
    assert (row.expires_at - row.heartbeat_at) == dt.timedelta(seconds=10)


def test_renewing_keeps_the_term_and_moves_the_heartbeat():
    lease = make_lease("a")
    lease.step()
    first = SchedulerLease.objects.get(name=LEASE_NAME)

    assert lease.step() is True
    renewed = SchedulerLease.objects.get(name=LEASE_NAME)
    assert renewed.term == first.term == 1
    assert renewed.acquired_at == first.acquired_at
    assert renewed.heartbeat_at >= first.heartbeat_at


def test_an_expired_lease_goes_to_the_next_process_with_a_new_term():
    first, second = make_lease("a"), make_lease("b")
    first.step()
    expire_in_database()

    assert second.step() is True
    assert first.step() is False
    row = SchedulerLease.objects.get(name=LEASE_NAME)
    assert (row.owner, row.term) == ("b", 2)
    assert second.read_term() == 2


def test_expiry_is_judged_by_the_database_clock_not_the_standbys():
    holder = make_lease("a")
    holder.step()
    standby_clock = Mono()
    standby = make_lease("b", standby_clock)
    standby_clock.now += 3600  # the standby's own clock says the lease is long gone

    assert standby.step() is False


def test_the_holder_stops_sending_before_its_lease_can_expire_without_asking_the_database():
    mono = Mono()
    lease = make_lease("a", mono, seconds=10)
    lease.step()
    assert lease.margin == 2.0

    with CaptureQueriesContext(connection) as queries:
        mono.now += 7.9
        assert lease.may_send() is True
        assert lease.remaining() == pytest.approx(0.1)
        mono.now += 0.2  # 8.1 s after the renewal started: within the margin of expiry
        assert lease.may_send() is False
        assert lease.remaining() == 0.0
    assert len(queries) == 0


def test_the_deadline_counts_from_before_the_renewal_was_sent():
    mono = Mono()
    lease = make_lease("a", mono, seconds=10)
    real_update = type(SchedulerLease.objects.all()).update

    def slow_update(queryset, **kwargs):
        mono.now += 3  # the UPDATE took 3 s to come back
        return real_update(queryset, **kwargs)

    with mock.patch.object(type(SchedulerLease.objects.all()), "update", slow_update):
        lease.step()
    mono.now += 5.1  # 8.1 s after the UPDATE was sent, 5.1 s after it returned
    assert lease.may_send() is False


def test_a_database_error_means_not_leading():
    lease = make_lease("a")
    lease.step()
    with mock.patch.object(
        type(SchedulerLease.objects.all()), "update", side_effect=OperationalError("gone")
    ):
        assert lease.step() is False
    assert lease.may_send() is False


def test_releasing_hands_the_lease_over_at_the_next_attempt():
    first, second = make_lease("a"), make_lease("b")
    first.step()
    first.release()

    assert first.may_send() is False
    assert second.step() is True


def test_a_missing_row_is_created_once_whoever_asks():
    SchedulerLease.objects.all().delete()
    ensure_row()
    ensure_row()
    assert SchedulerLease.objects.count() == 1
    assert make_lease("a").step() is True
