"""Is the scheduler alive? One alert when its heartbeat goes stale, one when a leader is back.

The state lives in the watchdog's row (``scheduler_down_since``), changed with conditional
UPDATEs, so two passes never alert the same change twice. A project whose beat runs another
scheduler (no heartbeat ever recorded) is not alerted: there is nothing to watch.
"""

from __future__ import annotations

import logging

from django.db.models.functions import Now

from orchestrator.humanize import format_duration
from orchestrator.models import WatchdogState
from orchestrator.notifications.delivery import notify_scheduler
from orchestrator.scheduler.status import scheduler_status

logger = logging.getLogger(__name__)


def check(state: WatchdogState) -> str:
    """Alert a change of the scheduler's health since the last pass; say what was alerted."""
    status = scheduler_status()
    rows = WatchdogState.objects.filter(name=state.name)
    if status.heartbeat_at is None:
        return ""
    if status.stale and state.scheduler_down_since is None:
        if not rows.filter(scheduler_down_since__isnull=True).update(scheduler_down_since=Now()):
            return ""  # another pass saw it first
        note = (
            f"The scheduler stopped: no heartbeat for "
            f"{format_duration(status.heartbeat_age_s)}; scheduled runs are not being sent"
        )
        logger.error("Watchdog: %s", note)
        notify_scheduler("stopped", note)
        return "down (alerted)"
    if not status.stale and state.scheduler_down_since is not None:
        # Claimed by the column being set, not by its value: SQLite's clock writes fewer
        # digits than a Python datetime compares with.
        if not rows.filter(scheduler_down_since__isnull=False).update(scheduler_down_since=None):
            return ""
        note = f"The scheduler is back: {status.leader or 'a leader'} sends the scheduled runs"
        logger.warning("Watchdog: %s", note)
        notify_scheduler("back", note)
        return "back (alerted)"
    return "down" if status.stale else ""
