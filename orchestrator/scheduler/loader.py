"""Load the schedule from the ``PeriodicTask`` rows, and keep it in step by reading what changed.

The database stays the schedule. At start the scheduler reads every enabled row once
(:meth:`ScheduleLoader.load_all`); afterwards each wake-up reads one row, the
``PeriodicTasks.last_update`` marker that django-celery-beat bumps on every change (a model
``save()`` or ``delete()``, a schedule row saved, ``beat_sync``, ``update_changed()`` after bulk
work). Only when it moved does :meth:`ScheduleLoader.changes` look further, in a constant number
of queries:

1. the rows whose ``date_changed`` is newer than the previous look, less :data:`OVERLAP` (a
   transaction that stamped its rows earlier may commit later, and the writers' clocks are not
   the database's);
2. the ids of the enabled rows, to find deleted and disabled rows (ids only);
3. the four schedule tables (crontab, interval, solar, clocked: few rows), to find rows edited in
   place, then the enabled rows that use an edited one.

Writers that bypass both ``date_changed`` and the marker (``QuerySet.update()`` without
``update_changed()``, raw SQL) are caught by :meth:`ScheduleLoader.reconcile`, which the
scheduler runs every :data:`RECONCILE_SECONDS`: one query returns an MD5 of each enabled row
(with its schedule's values), computed by the database, and only rows whose hash differs are read.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import models
from django.db.models import CharField, F, Q, Value
from django.db.models.functions import MD5, Cast, Coalesce, Concat
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
    SolarSchedule,
)

from orchestrator.scheduler.entries import Entry, EntryError, build_entry, timing_of
from orchestrator.scheduler.timing import Timing

logger = logging.getLogger("orchestrator.scheduler")

# How far back, before the previous look, a changed row is still looked for.
OVERLAP = dt.timedelta(seconds=60)
# How often the whole schedule is compared with the database by hash.
RECONCILE_SECONDS = 60.0
# Ids per query when rows are read by id (well under every database's parameter limit).
ID_CHUNK = 5000

_SCHEDULE_RELATIONS = ("crontab", "interval", "solar", "clocked")
_SCHEDULE_TABLES: dict[str, tuple[type[models.Model], tuple[str, ...]]] = {
    "crontab": (
        CrontabSchedule,
        ("minute", "hour", "day_of_month", "month_of_year", "day_of_week", "timezone"),
    ),
    "interval": (IntervalSchedule, ("every", "period")),
    "solar": (SolarSchedule, ("event", "latitude", "longitude")),
    "clocked": (ClockedSchedule, ("clocked_time",)),
}
# The PeriodicTask columns that make an entry (its run state excluded: the scheduler writes it).
_HASHED_FIELDS = (
    "name",
    "task",
    "args",
    "kwargs",
    "queue",
    "exchange",
    "routing_key",
    "priority",
    "expires",
    "expire_seconds",
    "one_off",
    "start_time",
    "headers",
    "crontab_id",
    "interval_id",
    "solar_id",
    "clocked_id",
)


@dataclass
class Changes:
    """What a look at the database found: entries to (re)build and entries to drop."""

    rows: list[Any] = field(default_factory=list)
    removed: set[int] = field(default_factory=set)
    # The ids of every enabled row, when the marker moved (None: not read this time).
    enabled_ids: set[int] | None = None

    def __bool__(self) -> bool:
        return bool(self.rows or self.removed)


def _row_hash() -> MD5:
    parts: list[Any] = []
    names = [*_HASHED_FIELDS]
    for relation, (_, columns) in _SCHEDULE_TABLES.items():
        names += [f"{relation}__{column}" for column in columns]
    for name in names:
        # NULL must not hash like an empty string; '|' keeps "ab","c" apart from "a","bc".
        parts += [Coalesce(Cast(F(name), CharField()), Value("\x01")), Value("|")]
    return MD5(_concat(parts))


def _concat(parts: list[Any]) -> Any:
    # A balanced tree of pairs: Django nests Concat's pairs one inside the next, 60 deep here,
    # which overflows SQLite's parser stack.
    if len(parts) == 1:
        return parts[0]
    middle = len(parts) // 2
    return Concat(_concat(parts[:middle]), _concat(parts[middle:]), output_field=CharField())


class ScheduleLoader:
    """Reads ``PeriodicTask`` rows into entries; remembers what it saw to find changes.

    ``since`` is the database time of the previous look at changed rows; ``marker`` the
    ``PeriodicTasks.last_update`` value seen then.
    """

    def __init__(self) -> None:
        self.marker: dt.datetime | None = None
        self.since: dt.datetime | None = None
        self._snapshots: dict[str, dict[int, tuple[Any, ...]]] = {}
        self._timings: dict[tuple[str, int], Timing] = {}
        self._bad: dict[int, str] = {}

    # Reading rows

    def _rows(self) -> Any:
        # The row's hash comes with it: reconciliation compares it with the database's later.
        return PeriodicTask.objects.select_related(*_SCHEDULE_RELATIONS).annotate(
            row_hash=_row_hash()
        )

    def load_all(self, db_now: dt.datetime | None, marker: dt.datetime | None) -> list[Entry]:
        """Every enabled row as an entry (rows that cannot be served are logged and left out)."""
        self.marker = marker
        self.since = db_now
        self._snapshots = self._read_snapshots()
        self._timings.clear()
        return self.build(self._rows().filter(enabled=True))

    def rows_by_id(self, ids: Iterable[int]) -> list[Any]:
        ids = sorted(set(ids))
        rows: list[Any] = []
        for start in range(0, len(ids), ID_CHUNK):
            rows += list(self._rows().filter(pk__in=ids[start : start + ID_CHUNK]))
        return rows

    def build(self, rows: Iterable[Any]) -> list[Entry]:
        entries = []
        for row in rows:
            entry = self.build_one(row)
            if entry is not None:
                entries.append(entry)
        return entries

    def build_one(self, row: Any) -> Entry | None:
        """The entry of an enabled row; None (logged once per problem) if it cannot be served."""
        try:
            timing = self._timing(row)
            entry = build_entry(row, timing)
        except EntryError as err:
            message = str(err)
            if self._bad.get(row.pk) != message:
                self._bad[row.pk] = message
                logger.error("Not scheduling periodic task %r: %s", row.name, message)
            return None
        self._bad.pop(row.pk, None)
        entry.row_hash = getattr(row, "row_hash", None)
        return entry

    def _timing(self, row: Any) -> Timing:
        # Rows that share a schedule row share its timing, and with it the cached tick times.
        for relation in _SCHEDULE_RELATIONS:
            schedule_id = getattr(row, f"{relation}_id")
            if schedule_id is None:
                continue
            key = (relation, schedule_id)
            timing = self._timings.get(key)
            if timing is None:
                try:
                    timing = timing_of(row)
                except EntryError:
                    raise
                except Exception as err:  # a schedule row edited around its validators
                    raise EntryError(f"its {relation} schedule cannot be read: {err}") from None
                self._timings[key] = timing
            return timing
        raise EntryError("it has no schedule (crontab, interval, solar or clocked)")

    # Finding changes

    def changes(self, db_now: dt.datetime, marker: dt.datetime | None) -> Changes:
        """What changed since the previous look, given the marker read at this wake-up.

        Costs nothing when the marker did not move, and six or seven queries when it did.
        """
        found = Changes()
        if marker == self.marker:
            return found
        since = (self.since or db_now) - OVERLAP
        rows = {row.pk: row for row in self._rows().filter(date_changed__gte=since)}
        found.enabled_ids = set(
            PeriodicTask.objects.filter(enabled=True).values_list("pk", flat=True)
        )
        snapshots = self._read_snapshots()
        edited: dict[str, set[int]] = {}
        for relation, current in snapshots.items():
            previous = self._snapshots.get(relation, {})
            changed = {pk for pk, values in current.items() if previous.get(pk) != values}
            changed |= set(previous) - set(current)
            if changed:
                edited[relation] = changed
                for pk in changed:
                    self._timings.pop((relation, pk), None)
        if edited:
            condition = Q()
            for relation, ids in edited.items():
                condition |= Q(**{f"{relation}_id__in": sorted(ids)})
            for row in self._rows().filter(condition, enabled=True):
                rows[row.pk] = row
        found.rows = [row for row in rows.values() if row.enabled]
        found.removed = {pk for pk, row in rows.items() if not row.enabled}
        self._snapshots = snapshots
        self.marker = marker
        self.since = db_now
        return found

    def _read_snapshots(self) -> dict[str, dict[int, tuple[Any, ...]]]:
        snapshots = {}
        for relation, (model, columns) in _SCHEDULE_TABLES.items():
            snapshots[relation] = {
                pk: tuple(str(value) for value in values)
                for pk, *values in model._default_manager.values_list("pk", *columns)
            }
        return snapshots

    # Reconciliation and fresh run state

    def hashes(self) -> dict[int, str]:
        """The MD5 of every enabled row with its schedule's values, computed by the database."""
        return dict(
            PeriodicTask.objects.filter(enabled=True)
            .annotate(row_hash=_row_hash())
            .values_list("pk", "row_hash")
        )

    @staticmethod
    def run_state() -> dict[int, tuple[dt.datetime | None, int, dt.datetime]]:
        """``last_run_at``, ``total_run_count`` and ``date_changed`` of every enabled row."""
        return {
            pk: (last_run_at, count, changed)
            for pk, last_run_at, count, changed in PeriodicTask.objects.filter(
                enabled=True
            ).values_list("pk", "last_run_at", "total_run_count", "date_changed")
        }


def marker_query() -> Any:
    """The ``PeriodicTasks.last_update`` marker, as a subquery."""
    return PeriodicTasks.objects.filter(ident=1).values("last_update")[:1]
