"""What operators do to scheduled tasks: one implementation each, called by every edge.

The admin's actions, the dashboard's buttons, the API and the shell (``ScheduledTask.run_now``)
all come here, so an operation means the same wherever it is started from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from celery.result import AsyncResult
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from orchestrator import beat_sync, dispatcher
from orchestrator.models import ScheduledTask, TaskRun


@dataclass(frozen=True)
class EnableResult:
    """What :func:`set_enabled` changed."""

    changed: int  # tasks whose flag changed
    unchanged: int  # tasks that already had it
    sync: beat_sync.SyncReport  # what beat_sync did to their beat entries


def set_enabled(tasks: QuerySet[ScheduledTask] | Iterable[int], enabled: bool) -> EnableResult:
    """Enable or disable ``tasks`` (a queryset or primary keys), beat entries included.

    The flags and the django-celery-beat rows change in one transaction, or not at all. Only
    the flag (and ``updated_at``) is written, so an edit made meanwhile on the same task is
    kept. The primary keys are read first: a queryset filtered on ``enabled`` would match
    nothing once the update has run.
    """
    pks = list(tasks.values_list("pk", flat=True) if isinstance(tasks, QuerySet) else tasks)
    selected = ScheduledTask.objects.filter(pk__in=pks)
    with transaction.atomic():
        changed = selected.exclude(enabled=enabled).update(
            enabled=enabled, updated_at=timezone.now()
        )
        report = beat_sync.beat_sync(selected)
    return EnableResult(changed=changed, unchanged=len(pks) - changed, sync=report)


def run_now(task: ScheduledTask, *, trigger: str = TaskRun.Trigger.MANUAL) -> AsyncResult:
    """Send a run of ``task`` to the workers now, outside its schedule.

    A disabled task is sent too: the worker records the run as skipped, which shows the
    operator what happened.
    """
    return dispatcher.enqueue(task, trigger=trigger)
