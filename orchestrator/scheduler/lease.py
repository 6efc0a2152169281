"""One sender among many beat processes: a lease row, judged by the database's clock.

Every beat process runs the same conditional UPDATE at each wake-up (:meth:`Lease.step`)::

    UPDATE orchestrator_schedulerlease
       SET owner = <me>, expires_at = NOW() + <lease>, heartbeat_at = NOW(), ...
     WHERE name = 'beat' AND (owner = <me> OR expires_at IS NULL OR expires_at < NOW())

One row changed: this process holds the lease (it took it, or renewed it). None: someone else
holds an unexpired lease. The row lock serialises concurrent attempts, and ``NOW()`` is the
database's clock, so the hosts' clocks play no part in who leads. It works alike on PostgreSQL,
MariaDB/MySQL and SQLite.

Fencing: a holder that stops renewing (killed, frozen by SIGSTOP, cut off from the database) must
stop sending before a standby can take over. The database sets ``expires_at`` after the holder
started its UPDATE, so the holder's lease runs at least until ``lease_seconds`` after that start
by its own monotonic clock; :meth:`Lease.may_send` answers True only until then, less
:attr:`Lease.margin` (time for a chunk of messages in flight). The scheduler asks it between
chunks of a large send.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Now

from orchestrator.models import SchedulerLease

logger = logging.getLogger("orchestrator.scheduler")

LEASE_NAME = "beat"


class DatabaseNow(Now):
    """``Now()`` in UTC on every backend.

    MySQL's ``CURRENT_TIMESTAMP`` (Django's ``Now()`` there) is in the session's time zone, which
    Django leaves at the server's; ``UTC_TIMESTAMP`` is what Django stores with ``USE_TZ``.
    """

    def as_mysql(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return self.as_sql(compiler, connection, template="UTC_TIMESTAMP(6)", **extra_context)


def ensure_row(name: str = LEASE_NAME) -> None:
    """Create the lease row if it is missing (concurrent creators are fine)."""
    if not SchedulerLease.objects.filter(name=name).exists():
        SchedulerLease.objects.bulk_create([SchedulerLease(name=name)], ignore_conflicts=True)


class Lease:
    """This process's view of the lease: ``step()`` at each wake-up, ``may_send()`` before sends.

    ``clock`` is the monotonic clock (injectable so tests never sleep).
    """

    def __init__(
        self,
        owner: str,
        holder: str,
        seconds: float,
        *,
        name: str = LEASE_NAME,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if seconds <= 0:
            raise ValueError("SCHEDULER_LEASE_SECONDS must be positive")
        self.owner = owner
        self.holder = holder
        self.seconds = float(seconds)
        self.name = name
        # Room for the chunk being published when the deadline passes, and for scheduling noise.
        self.margin = max(1.0, self.seconds * 0.2) if margin is None else float(margin)
        self.clock = clock
        self.leader = False
        self.term: int | None = None
        self._valid_until = float("-inf")

    def step(self) -> bool:
        """Take or renew the lease; return whether this process holds it now.

        A database error counts as not holding it (and is logged): the local deadline of the
        last renewal still fences any send after it.
        """
        started = self.clock()
        me = Q(owner=self.owner)
        now = DatabaseNow()
        try:
            changed = SchedulerLease.objects.filter(
                me | Q(expires_at__isnull=True) | Q(expires_at__lt=now), name=self.name
            ).update(
                # First, while ``owner`` is still the old one: MySQL evaluates SET assignments
                # left to right, each seeing the ones before it.
                term=Case(When(me, then=F("term")), default=F("term") + 1),
                acquired_at=Case(When(me, then=F("acquired_at")), default=now),
                owner=Value(self.owner),
                holder=Value(self.holder),
                expires_at=now + dt.timedelta(seconds=self.seconds),
                heartbeat_at=now,
            )
        except DatabaseError as err:
            if self.leader:
                logger.error("Could not renew the scheduler lease: %s", err)
            self.leader = False
            return False
        if changed:
            self._valid_until = started + self.seconds - self.margin
            self.leader = True
        else:
            self.leader = False
            self._valid_until = float("-inf")
        return self.leader

    def may_send(self) -> bool:
        """Whether this process may still send: it holds the lease by its own clock."""
        return self.leader and self.clock() < self._valid_until

    def remaining(self) -> float:
        """Seconds left before this process must stop sending (0 when it must not send)."""
        return max(0.0, self._valid_until - self.clock()) if self.leader else 0.0

    def read_term(self) -> int | None:
        row = SchedulerLease.objects.filter(name=self.name, owner=self.owner).first()
        self.term = None if row is None else row.term
        return self.term

    def release(self) -> None:
        """Give the lease up now (a clean shutdown): a standby takes over at its next wake-up."""
        self.leader = False
        self._valid_until = float("-inf")
        try:
            SchedulerLease.objects.filter(name=self.name, owner=self.owner).update(
                expires_at=DatabaseNow() - dt.timedelta(seconds=1)
            )
        except DatabaseError as err:
            logger.warning("Could not release the scheduler lease: %s", err)
