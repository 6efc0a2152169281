"""Write ``last_run_at`` and ``total_run_count`` back in a few statements per wake-up.

django-celery-beat saves each sent entry on its own (a SELECT and an UPDATE per entry). Here the
scheduler collects a :class:`RunWrite` per entry it moved on and writes them with one
``UPDATE ... WHERE id IN (...)`` per distinct (tick, count) pair: one statement for a wake-up in
which every due entry shared its tick, the usual case. Portable ORM updates, so PostgreSQL,
MariaDB/MySQL and SQLite run the same code.

Each UPDATE only moves ``last_run_at`` forwards (``last_run_at IS NULL OR last_run_at < tick``):
writing the same batch twice (a retry after the connection dropped once the database had
committed) changes nothing, and a process that lost the lease cannot move an entry back. The
writes do not touch ``date_changed`` or the ``PeriodicTasks`` marker, so they never look like a
schedule change to the other beat processes.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import F, Q
from django.utils import timezone
from django_celery_beat.models import PeriodicTask, PeriodicTasks

# Ids per statement: under every backend's parameter limit (SQLite: 32,766).
CHUNK = 10_000


@dataclass(frozen=True)
class RunWrite:
    """Entry ``pk`` moved on to ``tick`` after ``sent`` messages (0: its ticks were skipped)."""

    pk: int
    tick: dt.datetime
    sent: int


def merge(writes: Iterable[RunWrite]) -> list[RunWrite]:
    """One write per entry: the latest tick, with the messages of every write added up."""
    merged: dict[int, RunWrite] = {}
    for write in writes:
        earlier = merged.get(write.pk)
        if earlier is not None:
            write = RunWrite(write.pk, max(write.tick, earlier.tick), write.sent + earlier.sent)
        merged[write.pk] = write
    return list(merged.values())


def write_runs(writes: Iterable[RunWrite]) -> int:
    """Apply ``writes``; return the number of statements run."""
    groups: dict[tuple[dt.datetime, int], list[int]] = defaultdict(list)
    for write in merge(writes):
        groups[(write.tick, write.sent)].append(write.pk)
    statements = 0
    for (tick, sent), ids in groups.items():
        for start in range(0, len(ids), CHUNK):
            PeriodicTask.objects.filter(
                Q(last_run_at__isnull=True) | Q(last_run_at__lt=tick),
                pk__in=ids[start : start + CHUNK],
            ).update(last_run_at=tick, total_run_count=F("total_run_count") + sent)
            statements += 1
    return statements


def disable(ids: Iterable[int]) -> int:
    """Disable rows that are done: one-off entries that ran, entries past their ``expires``.

    The same fields django-celery-beat leaves on them (disabled, ``last_run_at`` empty, count
    reset, so enabling the row again runs it again), and a schedule change for the other beat
    processes: ``date_changed`` and the marker move.
    """
    ids = sorted(set(ids))
    if not ids:
        return 0
    changed = PeriodicTask.objects.filter(pk__in=ids).update(
        enabled=False, last_run_at=None, total_run_count=0, date_changed=timezone.now()
    )
    PeriodicTasks.update_changed()
    return changed
