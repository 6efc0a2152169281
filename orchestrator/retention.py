"""Bounded history: delete runs, alert deliveries and alert state once they are old enough.

``ORCHESTRATOR["RUN_RETENTION_DAYS"]`` (90) and ``ORCHESTRATOR["DELIVERY_RETENTION_DAYS"]`` (30)
set the cut-offs; ``None`` keeps that history forever. The maintenance pass calls :func:`prune`
with a time budget every minute; ``manage.py orchestrator_prune`` calls it without one.

What is deleted is decided by three filters (the plan: :func:`prunable_runs`,
:func:`prunable_deliveries`, :func:`prunable_alert_states`); :func:`prune` applies them in short
batches, each its own transaction, so no lock is held for more than one batch.

A run is deleted once everything about it is older than the run cut-off (it started, finished,
and its retry was due and sent before it), except:

* a run still ``queued`` or ``running``, or a ``retried`` one whose retry was not sent yet:
  something still happens to it;
* each task's latest run that ended for good (:meth:`TaskRun.final_outcomes`): the task's
  state, the dashboard and ``TaskState.objects.rebuild`` read it;
* a run that a kept alert delivery points to (the delivery log links to it), until that
  delivery is pruned itself.

A delivery is deleted once it was created before the delivery cut-off and has finished (sent,
failed or suppressed). Alert state (one row per channel, task and event) is deleted when it
holds nothing that changes the next alert: no recovery is owed, and its last alert is older than
the delivery cut-off and than the channel's cooldown. Such a row only carries a count of alerts
suppressed so long ago that their deliveries are gone; the next alert starts a fresh row. Alert
state of deleted tasks and channels goes with them (the foreign keys cascade).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from orchestrator import rollups
from orchestrator.conf import conf
from orchestrator.models import AlertState, NotificationChannel, NotificationDelivery, TaskRun

logger = logging.getLogger(__name__)

# Rows per DELETE statement: small enough that a batch holds its row locks for milliseconds,
# large enough that a backlog of a million rows is worked off in minutes.
DEFAULT_BATCH_SIZE = 1000
# Seconds the maintenance pass spends pruning at most (it runs every minute): a backlog is
# worked off over the next passes, and the pass's other parts never wait long.
MAINTENANCE_BUDGET = 10.0
# Retention settings are whole days from 1 to 100 years; None keeps that history forever.
MAX_RETENTION_DAYS = 36500

FINISHED_DELIVERY_STATUSES = (
    NotificationDelivery.Status.SENT,
    NotificationDelivery.Status.FAILED,
    NotificationDelivery.Status.SUPPRESSED,
)


class RetentionSettingError(ValueError):
    """A retention setting holds something other than None or a whole number of days."""


def retention_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``ORCHESTRATOR[name]``; None when it is."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return (
            f"ORCHESTRATOR[{name!r}] must be a whole number of days or None, "
            f"not {type(value).__name__} {value!r}."
        )
    if not 1 <= value <= MAX_RETENTION_DAYS:
        return (
            f"ORCHESTRATOR[{name!r}] must be from 1 to {MAX_RETENTION_DAYS} days, or None to keep "
            f"that history forever; it is {value}."
        )
    return None


def retention_days(name: str) -> int | None:
    """The validated value of ``ORCHESTRATOR[name]``; raise :class:`RetentionSettingError`."""
    value = getattr(conf, name)
    problem = retention_problem(name, value)
    if problem is not None:
        raise RetentionSettingError(problem)
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Cutoffs:
    """The moments before which history is old enough to delete; None keeps it all."""

    now: dt.datetime
    runs: dt.datetime | None
    deliveries: dt.datetime | None

    @classmethod
    def at(cls, now: dt.datetime) -> Cutoffs:
        """The cut-offs at ``now`` from the settings."""
        run_days = retention_days("RUN_RETENTION_DAYS")
        delivery_days = retention_days("DELIVERY_RETENTION_DAYS")
        return cls(
            now=now,
            runs=None if run_days is None else now - dt.timedelta(days=run_days),
            deliveries=None if delivery_days is None else now - dt.timedelta(days=delivery_days),
        )


# --- the plan: what may be deleted ---------------------------------------------------------------


def _delivery_is_prunable(cut: Cutoffs) -> Q | None:
    if cut.deliveries is None:
        return None
    return Q(created_at__lt=cut.deliveries, status__in=FINISHED_DELIVERY_STATUSES)


def prunable_deliveries(cut: Cutoffs) -> QuerySet[NotificationDelivery]:
    """Deliveries created before the cut-off that have finished (none when kept forever)."""
    prunable = _delivery_is_prunable(cut)
    if prunable is None:
        return NotificationDelivery.objects.none()
    return NotificationDelivery.objects.filter(prunable)


def _alert_state_is_prunable(cut: Cutoffs) -> Q | None:
    if cut.deliveries is None:
        return None
    # A channel whose cooldown reaches past the cut-off may still be suppressing with that row.
    longest = (cut.now - cut.deliveries).total_seconds()
    short_cooldown = NotificationChannel.objects.filter(cooldown__lt=longest).values("pk")
    return Q(awaiting_recovery=False, channel_id__in=short_cooldown) & (
        Q(last_sent_at__isnull=True) | Q(last_sent_at__lt=cut.deliveries)
    )


def prunable_alert_states(cut: Cutoffs) -> QuerySet[AlertState]:
    """Alert state that changes nothing any more: no recovery owed, last alert (if any) older
    than the delivery cut-off and than the channel's cooldown."""
    prunable = _alert_state_is_prunable(cut)
    if prunable is None:
        return AlertState.objects.none()
    return AlertState.objects.filter(prunable)


def _run_is_prunable(cut: Cutoffs, *, deliveries_pruned: bool) -> Q | None:
    """The filter of runs that may go (see the module's docstring); None if all are kept.

    ``deliveries_pruned``: the deliveries past their cut-off are gone already, so any delivery
    left keeps its run. Otherwise (a dry run counts before deleting anything) only the
    deliveries that will be kept do.
    """
    cutoff = cut.runs
    if cutoff is None:
        return None
    status = TaskRun.Status
    old = (
        Q(started_at__lt=cutoff)
        & (Q(finished_at__isnull=True) | Q(finished_at__lt=cutoff))
        & (Q(next_retry_at__isnull=True) | Q(next_retry_at__lt=cutoff))
    )
    awaiting_retry = Q(status=status.RETRIED) & (
        Q(retry_sent_at__isnull=True) | Q(retry_sent_at__gte=cutoff)
    )
    references = NotificationDelivery.objects.filter(task_run=OuterRef("pk"))
    prunable_delivery = _delivery_is_prunable(cut)
    if not deliveries_pruned and prunable_delivery is not None:
        references = references.exclude(prunable_delivery)
    # Ties on started_at are broken by id, as the history is ordered (-started_at, -id).
    newer_final = TaskRun.objects.filter(
        TaskRun.final_outcomes(),
        scheduled_task=OuterRef("scheduled_task"),
        started_at__gte=OuterRef("started_at"),
    ).filter(Q(started_at__gt=OuterRef("started_at")) | Q(pk__gt=OuterRef("pk")))
    return (
        old
        & ~Q(status__in=(status.QUEUED, status.RUNNING))
        & ~awaiting_retry
        & ~Exists(references)
        & (~TaskRun.final_outcomes() | Exists(newer_final))
    )


def prunable_runs(cut: Cutoffs, *, deliveries_pruned: bool = False) -> QuerySet[TaskRun]:
    """Runs older than the cut-off that nothing needs any more (none when kept forever)."""
    prunable = _run_is_prunable(cut, deliveries_pruned=deliveries_pruned)
    if prunable is None:
        return TaskRun.objects.none()
    return TaskRun.objects.filter(prunable)


# --- the report ----------------------------------------------------------------------------------


@dataclass
class PruneReport:
    """What one prune deleted (or, for a dry run, would delete) and how long it took.

    ``complete`` is False when the budget ran out with rows left for the next pass.
    ``longest_batch`` is the longest single batch transaction, in seconds: the longest time
    any row lock was held.
    """

    cutoffs: Cutoffs
    dry_run: bool = False
    runs: int = 0
    deliveries: int = 0
    alert_states: int = 0
    batches: int = 0
    complete: bool = True
    seconds: float = 0.0
    longest_batch: float = 0.0

    @property
    def deleted(self) -> int:
        return self.runs + self.deliveries + self.alert_states

    def counts(self) -> dict[str, int]:
        return {
            "runs": self.runs,
            "deliveries": self.deliveries,
            "alert_states": self.alert_states,
        }

    def lines(self) -> list[str]:
        """The report for people: cut-offs, then the count per table."""
        verb = "Would delete" if self.dry_run else "Deleted"
        return [
            _cutoff_line("Task runs", "RUN_RETENTION_DAYS", self.cutoffs.runs),
            _cutoff_line(
                "Deliveries and alert state", "DELIVERY_RETENTION_DAYS", self.cutoffs.deliveries
            ),
            f"{verb}: {self.runs:,} task runs ({TaskRun._meta.db_table}), "
            f"{self.deliveries:,} notification deliveries "
            f"({NotificationDelivery._meta.db_table}), {self.alert_states:,} alert states "
            f"({AlertState._meta.db_table}).",
            (
                f"Done in {self.seconds:.1f} s"
                + (
                    ""
                    if self.dry_run
                    else f", {self.batches:,} batches, longest {self.longest_batch * 1000:.0f} ms"
                )
                + ("." if self.complete else "; the budget ran out, the rest is left for later.")
            ),
        ]

    def __str__(self) -> str:
        return " ".join(self.lines())


def _cutoff_line(what: str, setting: str, cutoff: dt.datetime | None) -> str:
    if cutoff is None:
        return f"{what}: kept forever ({setting} is None)."
    days = getattr(conf, setting)
    shown = cutoff.astimezone(dt.UTC).isoformat(timespec="seconds")
    return f"{what}: older than {shown} ({setting} = {days})."


# --- applying it ---------------------------------------------------------------------------------


class PrunedRun(NamedTuple):
    """A deleted run, as it was when it was deleted."""

    pk: int
    scheduled_task_id: int
    status: str
    started_at: dt.datetime


class _Budget:
    def __init__(
        self, seconds: float | None, max_rows: int | None, clock: Callable[[], float]
    ) -> None:
        self.seconds, self.max_rows, self.clock = seconds, max_rows, clock
        self.started = clock()
        self.rows = 0

    def rows_left(self, batch_size: int) -> int:
        """Rows the next batch may take; 0 when the budget is spent."""
        if self.seconds is not None and self.clock() - self.started >= self.seconds:
            return 0
        if self.max_rows is None:
            return batch_size
        return max(min(batch_size, self.max_rows - self.rows), 0)


def prune(
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    budget: float | None = None,
    max_rows: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PruneReport:
    """Delete the history past its retention at ``now``; return what was deleted.

    Deliveries go first, then alert state, then runs (a run the log of a kept delivery points
    to stays). Each batch of at most ``batch_size`` rows is one short transaction. ``budget``
    (seconds) and ``max_rows`` bound one call: it stops between batches once either is spent,
    with ``complete`` False. ``dry_run`` deletes nothing and counts what a call without a
    budget would delete. Raise :class:`RetentionSettingError` for an invalid setting.
    """
    cut = Cutoffs.at(now or timezone.now())
    report = PruneReport(cut, dry_run=dry_run)
    started = clock()
    if dry_run:
        report.deliveries = prunable_deliveries(cut).count()
        report.alert_states = prunable_alert_states(cut).count()
        report.runs = prunable_runs(cut, deliveries_pruned=False).count()
        report.seconds = clock() - started
        return report
    batch_size = _safe_batch_size(batch_size)
    spend = _Budget(budget, max_rows, clock)
    for phase in (_prune_deliveries, _prune_alert_states, _prune_runs):
        if not phase(cut, report, spend, batch_size):
            report.complete = False
            break  # runs wait for the deliveries that point to them
    report.seconds = clock() - started
    if report.deleted:
        logger.info("Pruned history: %s", report)
    return report


def _safe_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more, not {batch_size}")
    # Each id is one query parameter; leave room for the filter's own.
    limit = connection.features.max_query_params
    return min(batch_size, limit - 50) if limit else batch_size


def _timed(
    report: PruneReport,
    clock: Callable[[], float],
    delete: Callable[[list[int], Q], int],
    ids: list[int],
    prunable: Q,
) -> int:
    """``delete(ids, prunable)``, its time counted in the report's longest batch."""
    started = clock()
    deleted = delete(ids, prunable)
    report.longest_batch = max(report.longest_batch, clock() - started)
    report.batches += 1
    return deleted


def _prune_deliveries(cut: Cutoffs, report: PruneReport, spend: _Budget, batch_size: int) -> bool:
    """Delete the prunable deliveries, oldest first; False if the budget ran out first."""
    prunable = _delivery_is_prunable(cut)
    if prunable is None:
        return True
    after: tuple[dt.datetime, int] | None = None
    while size := spend.rows_left(batch_size):
        rows = NotificationDelivery.objects.filter(prunable)
        if after is not None:
            rows = rows.filter(_after("created_at", after))
        batch = list(rows.order_by("created_at", "pk").values_list("created_at", "pk")[:size])
        if not batch:
            return True
        ids = [pk for _, pk in batch]
        deleted = _timed(report, spend.clock, _delete_deliveries, ids, prunable)
        report.deliveries += deleted
        spend.rows += deleted
        if len(batch) < size:
            return True
        after = batch[-1]
    return False


def _prune_alert_states(cut: Cutoffs, report: PruneReport, spend: _Budget, batch_size: int) -> bool:
    """Delete the alert state that changes nothing any more; False if the budget ran out."""
    prunable = _alert_state_is_prunable(cut)
    if prunable is None:
        return True
    after = 0
    while size := spend.rows_left(batch_size):
        ids = list(
            AlertState.objects.filter(prunable, pk__gt=after)
            .order_by("pk")
            .values_list("pk", flat=True)[:size]
        )
        if not ids:
            return True
        deleted = _timed(report, spend.clock, _delete_alert_states, ids, prunable)
        report.alert_states += deleted
        spend.rows += deleted
        if len(ids) < size:
            return True
        after = ids[-1]
    return False


def _prune_runs(cut: Cutoffs, report: PruneReport, spend: _Budget, batch_size: int) -> bool:
    """Delete the prunable runs, oldest first; False if the budget ran out first."""
    prunable = _run_is_prunable(cut, deliveries_pruned=True)
    if prunable is None:
        return True
    after: tuple[dt.datetime, int] | None = None
    while size := spend.rows_left(batch_size):
        rows = TaskRun.objects.filter(prunable)
        if after is not None:
            # Where the previous batch stopped: the runs kept there are not read again.
            rows = rows.filter(_after("started_at", after))
        batch = list(rows.order_by("started_at", "pk").values_list("started_at", "pk")[:size])
        if not batch:
            return True
        ids = [pk for _, pk in batch]
        try:
            deleted = _timed(report, spend.clock, _delete_run_batch, ids, prunable)
        except IntegrityError:
            # An alert was written for one of them meanwhile: the foreign key refused the
            # batch and it rolled back. The next pass chooses again; the others go on.
            logger.warning(
                "Could not prune runs %s to %s: a row written meanwhile refers to one of them; "
                "they are left for the next pass",
                ids[0],
                ids[-1],
            )
            deleted = 0
        report.runs += deleted
        spend.rows += deleted
        if len(batch) < size:
            return True
        after = batch[-1]
    return False


def _after(column: str, position: tuple[dt.datetime, int]) -> Q:
    """Rows after ``position`` in (``column``, pk) order; the ``>=`` lets an index on
    ``column`` start the scan there."""
    moment, pk = position
    return Q(**{f"{column}__gte": moment}) & (Q(**{f"{column}__gt": moment}) | Q(pk__gt=pk))


def _lock(rows: QuerySet[Any]) -> QuerySet[Any]:
    """``rows`` locked for this transaction; rows another transaction is writing are skipped
    (a pruner never waits), where the database can."""
    if not connection.features.has_select_for_update:
        return rows  # SQLite: the one writer at a time is the lock
    return rows.select_for_update(skip_locked=connection.features.has_select_for_update_skip_locked)


def _delete_runs(ids: list[int], prunable: Q) -> list[PrunedRun]:
    """Delete the runs ``ids`` that are still prunable, in one transaction; return them as they
    were deleted.

    Every run that retention deletes goes through here, one batch per call. The rows are read
    and locked first (with the filter applied again, so a run that changed since it was chosen
    stays), and deleted by id in one statement: ``QuerySet.delete()`` would load every column
    of every row and look for deliveries, which the filter already excludes (the foreign key
    still guards against one written meanwhile: the batch then rolls back, nothing is lost).
    """
    with transaction.atomic():
        rows = [
            PrunedRun(*values)
            for values in _lock(TaskRun.objects.filter(prunable, pk__in=ids))
            .order_by()
            .values_list("pk", "scheduled_task_id", "status", "started_at")
        ]
        if not rows:
            return []
        ids = [row.pk for row in rows]
        # In the same transaction, before the DELETE: the per-task aggregates lose what these
        # runs counted (and the exported counters keep it), so they stay exact after pruning.
        rollups.forget_runs(ids)
        _raw_delete(TaskRun, ids)
    return rows


def _delete_run_batch(ids: list[int], prunable: Q) -> int:
    return len(_delete_runs(ids, prunable))


def _delete_deliveries(ids: list[int], prunable: Q) -> int:
    """Delete the deliveries ``ids`` that are still prunable (one statement, nothing refers
    to a delivery)."""
    with transaction.atomic():
        deleted, _ = NotificationDelivery.objects.filter(prunable, pk__in=ids).delete()
    return deleted


def _delete_alert_states(ids: list[int], prunable: Q) -> int:
    """Delete the alert states ``ids`` that are still prunable. The filter is part of the
    DELETE: a row that an alert updated meanwhile (it holds the row's lock while it decides)
    is read again after that alert's commit, and kept."""
    with transaction.atomic():
        deleted, _ = AlertState.objects.filter(prunable, pk__in=ids).delete()
    return deleted


def _raw_delete(model: type[TaskRun], ids: list[int]) -> int:
    table = connection.ops.quote_name(model._meta.db_table)
    column = connection.ops.quote_name(str(model._meta.pk.column))
    placeholders = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE {column} IN ({placeholders})", ids)
        return int(cursor.rowcount)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAINTENANCE_BUDGET",
    "Cutoffs",
    "PruneReport",
    "PrunedRun",
    "RetentionSettingError",
    "prunable_alert_states",
    "prunable_deliveries",
    "prunable_runs",
    "prune",
    "retention_days",
    "retention_problem",
]
