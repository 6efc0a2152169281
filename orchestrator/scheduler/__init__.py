"""orchestrator's Celery beat scheduler: ``celery beat -S orchestrator.scheduler:Scheduler``.

A drop-in replacement for django-celery-beat's ``DatabaseScheduler`` that sends every due entry
on time at 10,000 schedules, runs in several replicas with one sender (a lease in the database),
stamps each run with its tick and applies the scheduled tasks' catch-up policies. See
``docs/scheduler.md``. :func:`orchestrator.scheduler.status.scheduler_status` tells whether one
is running.

``Scheduler`` is imported on first use, so that ``orchestrator.scheduler.status`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.scheduler.beat import Scheduler

__all__ = ["Scheduler"]


def __getattr__(name: str) -> Any:
    if name == "Scheduler":
        from orchestrator.scheduler.beat import Scheduler

        return Scheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
