"""Each beat process's own heartbeat row: who runs, on which host, as leader or standby.

The lease row says who leads; these rows show the standbys too (the dashboard and
:func:`orchestrator.scheduler.status.scheduler_status` read them). Each process writes its row at
most every :data:`BEAT_EVERY` seconds, and at once when its role changes; the leader deletes rows
not seen for :data:`FORGET_AFTER`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable

from django.db import DatabaseError

from orchestrator.models import BeatProcess
from orchestrator.scheduler.lease import DatabaseNow

logger = logging.getLogger("orchestrator.scheduler")

BEAT_EVERY = 5.0
FORGET_AFTER = dt.timedelta(days=1)


def this_host() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


class ProcessRow:
    """The heartbeat row of this process."""

    def __init__(
        self,
        ident: str,
        hostname: str,
        pid: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ident = ident
        self.hostname = hostname
        self.pid = pid
        self.clock = clock
        self.role: str | None = None
        self._last_beat = float("-inf")

    @property
    def label(self) -> str:
        return f"{self.hostname}:{self.pid}"

    def beat(self, role: str, *, force: bool = False) -> bool:
        """Write the row if its role changed or :data:`BEAT_EVERY` passed; True if written."""
        if not force and role == self.role and self.clock() - self._last_beat < BEAT_EVERY:
            return False
        now = DatabaseNow()
        try:
            updated = BeatProcess.objects.filter(ident=self.ident).update(
                role=role, last_seen_at=now
            )
            if not updated:
                BeatProcess.objects.bulk_create(
                    [
                        BeatProcess(
                            ident=self.ident,
                            hostname=self.hostname[:255],
                            pid=self.pid,
                            role=role,
                            started_at=dt.datetime.now(dt.UTC),
                            last_seen_at=dt.datetime.now(dt.UTC),
                        )
                    ],
                    ignore_conflicts=True,
                )
                # Stamped by the database's clock, like every later heartbeat.
                BeatProcess.objects.filter(ident=self.ident).update(last_seen_at=now)
        except DatabaseError as err:
            logger.warning("Could not write this beat process's heartbeat: %s", err)
            return False
        self.role = role
        self._last_beat = self.clock()
        return True

    def forget(self) -> None:
        try:
            BeatProcess.objects.filter(ident=self.ident).delete()
        except DatabaseError as err:
            logger.warning("Could not remove this beat process's heartbeat row: %s", err)


def forget_old_processes() -> int:
    """Delete the rows of processes not seen for :data:`FORGET_AFTER`; return how many."""
    cutoff = DatabaseNow() - FORGET_AFTER
    return BeatProcess.objects.filter(last_seen_at__lt=cutoff).delete()[0]
