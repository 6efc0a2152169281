"""Is a scheduler running? What the watchdog, ``/health/`` and the dashboard ask.

:func:`scheduler_status` reads the lease row (who leads, when it last woke) and the beat processes
seen recently (the standbys), in two queries whatever the number of schedules or processes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from orchestrator.conf import conf
from orchestrator.models import BeatProcess, SchedulerLease
from orchestrator.scheduler.lease import LEASE_NAME, DatabaseNow


@dataclass(frozen=True)
class SchedulerStatus:
    """The scheduler as the database shows it.

    ``leader`` is ``hostname:pid`` of the process holding an unexpired lease (None when nobody
    does); ``heartbeat_at`` when the leader, or the last one, last woke up; ``heartbeat_age_s``
    how long ago that was; ``standbys`` the other beat processes seen within
    ``ORCHESTRATOR["SCHEDULER_STALE_AFTER"]``; ``stale`` is True when no heartbeat is younger
    than that (no scheduler has run, or none runs now).
    """

    leader: str | None
    heartbeat_at: dt.datetime | None
    heartbeat_age_s: float | None
    standbys: list[str]
    stale: bool


def scheduler_status(now: dt.datetime | None = None) -> SchedulerStatus:
    """The scheduler's state at ``now`` (default: the database's clock), in two queries.

    The heartbeat is stamped by the database's clock, so without ``now`` the web server's own
    clock plays no part in the age.
    """
    stale_after = conf.SCHEDULER_STALE_AFTER
    row = (
        SchedulerLease.objects.filter(name=LEASE_NAME)
        .annotate(db_now=DatabaseNow())
        .values("holder", "expires_at", "heartbeat_at", "db_now")
        .first()
    )
    if now is None:
        # No lease row: no scheduler ever ran here, and there is no heartbeat to compare.
        now = row["db_now"] if row is not None else dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    leader = heartbeat_at = age = None
    if row is not None:
        heartbeat_at = row["heartbeat_at"]
        if heartbeat_at is not None:
            age = max(0.0, (now - heartbeat_at).total_seconds())
        if row["holder"] and row["expires_at"] is not None and row["expires_at"] > now:
            leader = row["holder"]
    seen_since = now - dt.timedelta(seconds=stale_after)
    standbys = sorted(
        f"{hostname}:{pid}"
        for hostname, pid in BeatProcess.objects.filter(
            role=BeatProcess.Role.STANDBY, last_seen_at__gte=seen_since
        ).values_list("hostname", "pid")
    )
    return SchedulerStatus(
        leader=leader,
        heartbeat_at=heartbeat_at,
        heartbeat_age_s=age,
        standbys=standbys,
        stale=age is None or age > stale_after,
    )
