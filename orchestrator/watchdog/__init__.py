"""The watchdog: it notices what nothing else can, from outside the scheduler.

A pass (:func:`run_pass`) records the ticks that had no run as ``missed`` runs
(:mod:`.missed`), alerts once when the scheduler's heartbeat goes stale and once when a leader is
back (:mod:`.scheduler`), and stamps when it ran, which ``/health/`` reads. It does not depend on
beat: the Celery workers run it (the bootstep in :mod:`orchestrator.worker`, one worker at a time
across the fleet) and so does ``python manage.py orchestrator_watchdog``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.db.models import Q
from django.db.models.functions import Now

from orchestrator.conf import conf
from orchestrator.models import WatchdogState
from orchestrator.watchdog import missed, scheduler
from orchestrator.watchdog.missed import MissedReport

logger = logging.getLogger(__name__)

STATE_NAME = "watchdog"


@dataclass
class PassReport:
    """What one pass did; ``ran`` is False when another process had the turn."""

    ran: bool
    missed: MissedReport | None = None
    scheduler_alert: str = ""

    def __str__(self) -> str:
        if not self.ran:
            return "not this process's turn"
        found = self.missed or MissedReport()
        text = (
            f"{found.tasks_checked} tasks and {found.ticks_checked} ticks checked, "
            f"{found.ticks_missed} missed ({found.rows_created} new, {found.rows_extended} "
            "extended)"
        )
        return f"{text}; scheduler {self.scheduler_alert}" if self.scheduler_alert else text


def take_turn(holder: str, interval: float) -> dt.datetime | None:
    """Claim this pass for ``holder`` unless one ran in the last ``interval`` seconds (by the
    database's clock, so hosts' clocks do not matter); return the database's time, or None.

    A conditional UPDATE: of several workers asking at once, one gets it.
    """
    WatchdogState.objects.get_or_create(name=STATE_NAME)
    due = Q(last_pass_at__isnull=True) | Q(last_pass_at__lte=Now() - dt.timedelta(seconds=interval))
    claimed = WatchdogState.objects.filter(due, name=STATE_NAME).update(
        last_pass_at=Now(), holder=holder[:255]
    )
    if not claimed:
        return None
    return WatchdogState.objects.values_list("last_pass_at", flat=True).get(name=STATE_NAME)


def run_pass(
    holder: str = "", *, force: bool = False, now: dt.datetime | None = None
) -> PassReport:
    """One watchdog pass, if it is this process's turn (``force``: whatever the turn).

    Each part runs on its own: one failing is logged and does not stop the other.
    """
    # Taken a little under the interval: a timer that fires a moment early must not skip.
    interval = 0 if force else conf.WATCHDOG_INTERVAL * 0.8
    started = take_turn(holder or "unknown", interval)
    if started is None:
        return PassReport(ran=False)
    at = now or started
    state = WatchdogState.objects.get(name=STATE_NAME)
    report = PassReport(ran=True)
    try:
        report.missed = missed.check(at, state.checked_through)
    except Exception:
        logger.exception("Watchdog: checking for missed runs failed")
    else:
        WatchdogState.objects.filter(name=STATE_NAME).update(checked_through=at)
    try:
        report.scheduler_alert = scheduler.check(state)
    except Exception:
        logger.exception("Watchdog: checking the scheduler failed")
    return report


def last_pass_age() -> float | None:
    """Seconds since the last pass started, by the database's clock (None if none ever ran)."""
    row = (
        WatchdogState.objects.filter(name=STATE_NAME)
        .annotate(db_now=Now())
        .values("last_pass_at", "db_now")
        .first()
    )
    if row is None or row["last_pass_at"] is None:
        return None
    return max(0.0, (row["db_now"] - row["last_pass_at"]).total_seconds())


__all__ = ["PassReport", "last_pass_age", "run_pass", "take_turn"]
