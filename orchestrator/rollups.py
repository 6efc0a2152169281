"""Per-task aggregates of the run history, kept exact as runs end: what pages and metrics read.

**What is counted.** :class:`~orchestrator.models.TaskRunRollup` counts every run in a final
status (:data:`COUNTED_STATUSES`: everything but ``queued`` and ``running``), per scheduled
task, status and the UTC hour its ``started_at`` falls in. A run enters the aggregates in the
transaction that gives it a final status (:func:`record`); the only change of a final status
afterwards, an operator cancelling a failed attempt whose retry waits (``retried`` ->
``cancelled``), moves it (:func:`move`, which keeps its old count in
:class:`~orchestrator.models.RetiredRunCount`); a missed row that the watchdog extends adds its new
ticks (:func:`add_ticks`). Runs about to be deleted are taken out by :func:`forget_runs`, which
adds them to :class:`~orchestrator.models.RetiredRunCount`, so counters exported to
Prometheus never go down. :func:`rebuild` computes the aggregates again from the history.

So at any time, for every task, status and hour, ``TaskRunRollup.runs`` equals
``COUNT(*)`` of the task's runs in that status started in that hour (``tests/test_rollups.py``
checks it after runs, retries, losses, skips, cancels and deletions).

**How.** Every write is one statement: an atomic add to the counters (``INSERT ... ON
CONFLICT DO UPDATE`` on PostgreSQL and SQLite, ``ON DUPLICATE KEY UPDATE`` on MariaDB and
MySQL), so workers on many hosts can end runs of the same task in the same hour at once.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from django.db import connections, router, transaction
from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    Field,
    Func,
    IntegerField,
    Max,
    Model,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce, TruncHour

from orchestrator.models import (
    DURATION_BUCKETS,
    AlertCount,
    NotificationDelivery,
    RetiredRunCount,
    TaskRun,
    TaskRunRollup,
)

Status = TaskRun.Status

# Runs are counted once they reach one of these; queued and running ones have no outcome yet.
COUNTED_STATUSES: tuple[str, ...] = (
    Status.SUCCEEDED,
    Status.RETRIED,
    Status.FAILED,
    Status.SKIPPED,
    Status.LOST,
    Status.CANCELLED,
    Status.MISSED,
)
# The attempts whose duration is the function's own run time: the duration histogram.
TIMED_STATUSES: tuple[str, ...] = (Status.SUCCEEDED, Status.RETRIED, Status.FAILED)

BUCKET_COLUMNS: tuple[str, ...] = tuple(name for name, _ in DURATION_BUCKETS)
COUNTER_COLUMNS: tuple[str, ...] = ("runs", "ticks", "timed", "duration_us", *BUCKET_COLUMNS)


def hour_of(moment: dt.datetime) -> dt.datetime:
    """The start of the UTC hour ``moment`` falls in (an aware datetime)."""
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


@dataclass
class Delta:
    """What to add to the counters of one (task, status, hour) row; negative to take away."""

    scheduled_task_id: int
    status: str
    hour: dt.datetime
    counters: dict[str, int] = field(default_factory=dict)
    last_started_at: dt.datetime | None = None

    def add(self, other: Delta) -> None:
        for name, value in other.counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        if other.last_started_at is not None and (
            self.last_started_at is None or other.last_started_at > self.last_started_at
        ):
            self.last_started_at = other.last_started_at


def delta_of(run: TaskRun, sign: int = 1, status: str | None = None) -> Delta:
    """The contribution of ``run`` (in ``status``, its own by default) to its hour's row."""
    counters = {"runs": sign}
    status = status or run.status
    if status == Status.MISSED and run.missed_count:
        counters["ticks"] = sign * run.missed_count
    if run.duration is not None:
        seconds = run.duration.total_seconds()
        counters["timed"] = sign
        counters["duration_us"] = sign * _microseconds(run.duration)
        for name, bound in DURATION_BUCKETS:
            if seconds <= bound:
                counters[name] = sign
    return Delta(
        scheduled_task_id=run.scheduled_task_id,
        status=status,
        hour=hour_of(run.started_at),
        counters=counters,
        last_started_at=run.started_at if sign > 0 else None,
    )


def _microseconds(duration: dt.timedelta) -> int:
    return (duration.days * 86400 + duration.seconds) * 1_000_000 + duration.microseconds


# --- keeping them as runs end -------------------------------------------------------------------


def record(runs: TaskRun | Iterable[TaskRun], *, using: str | None = None) -> None:
    """Count ``runs``, which have just reached a final status (one statement for all).

    Call it in the transaction that wrote that status. Runs not in :data:`COUNTED_STATUSES`
    are ignored.
    """
    rows = [runs] if isinstance(runs, TaskRun) else list(runs)
    _apply([delta_of(run) for run in rows if run.status in COUNTED_STATUSES], using=using)


def update_and_record(run: TaskRun, values: dict[str, Any], *, only_if_status: str) -> int:
    """UPDATE ``run``'s row with ``values``, which give it its final status, if its status is
    still ``only_if_status``, and count ``run`` if it was written; return the rows updated (0
    or 1).

    On PostgreSQL this is one statement (the UPDATE in a ``WITH`` clause feeding the add), so a
    successful attempt keeps its three statements and needs no transaction of its own; its text
    is built once per set of columns (see :func:`_update_statement`). Elsewhere it is the
    UPDATE and the add in one transaction.
    """
    alias = run._state.db or router.db_for_write(TaskRun, instance=run)
    connection = connections[alias]
    if (
        connection.vendor != "postgresql"
        or run.status not in COUNTED_STATUSES
        or any(hasattr(value, "resolve_expression") for value in values.values())
    ):
        with transaction.atomic(using=alias, savepoint=False):
            written = (
                TaskRun.objects.using(alias)
                .filter(pk=run.pk, status=only_if_status)
                .update(**values)
            )
            if written:
                record(run, using=alias)
            return written
    update_sql, update_params = _update_sql(run.pk, only_if_status, values, alias)
    delta = delta_of(run)
    row = {
        "scheduled_task_id": delta.scheduled_task_id,
        "status": delta.status,
        "hour": delta.hour,
        **{name: delta.counters.get(name, 0) for name in COUNTER_COLUMNS},
        "last_started_at": delta.last_started_at,
    }
    upsert_sql, upsert_params = _upsert_sql(
        TaskRunRollup,
        ("scheduled_task_id", "status", "hour"),
        COUNTER_COLUMNS,
        [row],
        latest="last_started_at",
        using=alias,
        source="written",
    )
    sql = f"WITH written AS ({update_sql} RETURNING 1) {upsert_sql}"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*update_params, *upsert_params])
        # One rollup row inserted or updated per run row written.
        return max(int(cursor.rowcount), 0)


def _update_sql(
    run_id: int, only_if_status: str, values: dict[str, Any], using: str
) -> tuple[str, list[Any]]:
    """``TaskRun.objects.filter(pk=run_id, status=only_if_status).update(**values)``'s SQL.

    As ``QuerySet.update()`` writes it: each value prepared by its field, ``None`` as a literal
    ``NULL`` (a parameter would be JSON ``null`` in a JSON column).
    """
    connection = connections[using]
    sql, fields = _update_statement(
        tuple(values),
        tuple(value is None for value in values.values()),
        connection.alias,
        connection.vendor,
    )
    params = [field.get_db_prep_save(values[field.name], connection) for field in fields]
    params.extend([run_id, only_if_status])
    return sql, params


@functools.lru_cache(maxsize=64)
def _update_statement(
    names: tuple[str, ...], nulls: tuple[bool, ...], alias: str, vendor: str
) -> tuple[str, tuple[Field[Any, Any], ...]]:
    """The SQL of :func:`_update_sql` for these columns, and the fields of its parameters."""
    quote = connections[alias].ops.quote_name
    meta = TaskRun._meta
    table = quote(meta.db_table)
    fields = [cast("Field[Any, Any]", meta.get_field(name)) for name in names]

    def column(field: Any) -> str:
        return quote(cast(str, field.column))

    sets = [
        f"{column(field)} = {'NULL' if null else '%s'}"
        for field, null in zip(fields, nulls, strict=True)
    ]
    where = f"{table}.{column(meta.pk)} = %s AND {table}.{column(meta.get_field('status'))} = %s"
    sql = f"UPDATE {table} SET {', '.join(sets)} WHERE ({where})"
    return sql, tuple(field for field, null in zip(fields, nulls, strict=True) if not null)


def move(run: TaskRun, old_status: str, *, using: str | None = None) -> None:
    """``run`` went from the final ``old_status`` to its current status: count it there.

    Its count under ``old_status`` goes to :class:`RetiredRunCount`, so the exported counter
    of that status keeps it (a counter never goes down). A few statements: it is rare (an
    operator cancelling a waiting retry).
    """
    alias = using or router.db_for_write(TaskRunRollup)
    taken = delta_of(run, -1, old_status)
    deltas = [taken]
    if run.status in COUNTED_STATUSES:
        deltas.append(delta_of(run))
    _apply(deltas, using=alias)
    # The hour it left may have had its latest start from it.
    _refresh_latest(
        [{"scheduled_task_id": taken.scheduled_task_id, "status": old_status, "hour": taken.hour}],
        [run.pk],
        alias,
    )
    retired = delta_of(run, 1, old_status)
    upsert_add(
        RetiredRunCount,
        ("scheduled_task_id", "status"),
        COUNTER_COLUMNS,
        [
            {
                "scheduled_task_id": retired.scheduled_task_id,
                "status": retired.status,
                **{name: retired.counters.get(name, 0) for name in COUNTER_COLUMNS},
                "last_started_at": retired.last_started_at,
            }
        ],
        latest="last_started_at",
        using=alias,
    )


def add_ticks(run: TaskRun, ticks: int, *, using: str | None = None) -> None:
    """The watchdog extended the missed row ``run`` by ``ticks`` ticks."""
    if ticks:
        delta = Delta(run.scheduled_task_id, Status.MISSED, hour_of(run.started_at))
        delta.counters["ticks"] = ticks
        _apply([delta], using=using)


def extend_ticks(runs: Sequence[tuple[TaskRun, int]], *, using: str | None = None) -> None:
    """Several missed rows extended at once: ``(row, new ticks)`` pairs, one statement."""
    deltas = []
    for run, ticks in runs:
        if ticks:
            delta = Delta(run.scheduled_task_id, Status.MISSED, hour_of(run.started_at))
            delta.counters["ticks"] = ticks
            deltas.append(delta)
    _apply(deltas, using=using)


def _merge(deltas: Iterable[Delta]) -> list[Delta]:
    merged: dict[tuple[int, str, dt.datetime], Delta] = {}
    for delta in deltas:
        key = (delta.scheduled_task_id, delta.status, delta.hour)
        if key in merged:
            merged[key].add(delta)
        else:
            merged[key] = Delta(*key, counters=dict(delta.counters))
            merged[key].last_started_at = delta.last_started_at
    return list(merged.values())


def _apply(deltas: Iterable[Delta], *, using: str | None = None) -> None:
    rows = _merge(deltas)
    if not rows:
        return
    alias = using or router.db_for_write(TaskRunRollup)
    values = [
        {
            "scheduled_task_id": row.scheduled_task_id,
            "status": row.status,
            "hour": row.hour,
            **{name: row.counters.get(name, 0) for name in COUNTER_COLUMNS},
            "last_started_at": row.last_started_at,
        }
        for row in rows
    ]
    upsert_add(
        TaskRunRollup,
        ("scheduled_task_id", "status", "hour"),
        COUNTER_COLUMNS,
        values,
        latest="last_started_at",
        using=alias,
    )


def upsert_add(
    model: type[Model],
    keys: Sequence[str],
    counters: Sequence[str],
    rows: Sequence[dict[str, Any]],
    *,
    latest: str | None = None,
    using: str,
) -> None:
    """Add each row's ``counters`` to the row of ``model`` with the same ``keys`` (column
    names), creating it when missing; keep the later of the two ``latest`` values. One
    statement, atomic against concurrent writers on PostgreSQL, SQLite, MariaDB and MySQL."""
    if not rows:
        return
    sql, params = _upsert_sql(model, keys, counters, rows, latest=latest, using=using)
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)


def _upsert_sql(
    model: type[Model],
    keys: Sequence[str],
    counters: Sequence[str],
    rows: Sequence[dict[str, Any]],
    *,
    latest: str | None,
    using: str,
    source: str = "",
) -> tuple[str, list[Any]]:
    """The statement of :func:`upsert_add`; with ``source`` (a CTE's name, PostgreSQL), one
    row is inserted per row of that CTE instead of ``VALUES``.

    The text depends only on the columns and the number of rows: it is built once per shape
    and process (the dispatcher asks for it on every successful attempt). The counters are
    whole numbers and go to the database as they are; the other columns are prepared by their
    fields (a datetime's time zone, for one).
    """
    connection = connections[using]
    sql, prepared = _upsert_statement(
        model,
        tuple(keys),
        tuple(counters),
        latest,
        connection.alias,
        connection.vendor,
        source,
        1 if source else len(rows),
    )
    params: list[Any] = []
    for row in rows:
        for column, prep_field in prepared:
            value = row[column]
            params.append(
                value if prep_field is None else prep_field.get_db_prep_save(value, connection)
            )
    return sql, params


@functools.lru_cache(maxsize=64)
def _upsert_statement(
    model: type[Model],
    keys: tuple[str, ...],
    counters: tuple[str, ...],
    latest: str | None,
    alias: str,
    vendor: str,
    source: str,
    rows: int,
) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The SQL of an upsert-add of ``rows`` rows, and each parameter's column with the field
    that prepares it (None for a counter)."""
    connection = connections[alias]
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    columns = [*keys, *counters, *([latest] if latest else [])]
    fields = {f.column: f for f in model._meta.concrete_fields}
    prepared = tuple((c, None if c in counters else fields[c]) for c in columns)
    if source:
        values_sql = "SELECT " + ", ".join(["%s"] * len(columns)) + f" FROM {source}"
    else:
        one = "(" + ", ".join(["%s"] * len(columns)) + ")"
        values_sql = "VALUES " + ", ".join([one] * rows)
    names = ", ".join(quote(c) for c in columns)
    mysql = vendor == "mysql"

    def new(column: str) -> str:
        return f"VALUES({quote(column)})" if mysql else f"excluded.{quote(column)}"

    def old(column: str) -> str:
        return quote(column) if mysql else f"{table}.{quote(column)}"

    sets = [f"{quote(c)} = {old(c)} + {new(c)}" for c in counters]
    if latest:
        sets.append(
            f"{quote(latest)} = CASE WHEN {new(latest)} IS NULL THEN {old(latest)} "
            f"WHEN {old(latest)} IS NULL OR {new(latest)} > {old(latest)} THEN {new(latest)} "
            f"ELSE {old(latest)} END"
        )
    if mysql:
        conflict = "ON DUPLICATE KEY UPDATE"
    else:
        conflict = f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET"
    sql = f"INSERT INTO {table} ({names}) {values_sql} {conflict} {', '.join(sets)}"
    return sql, prepared


# --- deleting runs ------------------------------------------------------------------------------


class _Microseconds(Func):
    """A duration column as whole microseconds (SQLite and MySQL store it so already)."""

    output_field = BigIntegerField()

    def as_sql(  # type: ignore[override]
        self, compiler: Any, connection: Any, **extra: Any
    ) -> tuple[str, list[Any]]:
        sql, params = compiler.compile(self.source_expressions[0])
        return sql, list(params)

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list[Any]]:
        sql, params = compiler.compile(self.source_expressions[0])
        return f"CAST(EXTRACT(EPOCH FROM {sql}) * 1000000 AS BIGINT)", list(params)


def _aggregates() -> dict[str, Any]:
    """The counter columns as aggregates over TaskRun rows (their order is COUNTER_COLUMNS')."""
    zero = Value(0, output_field=BigIntegerField())
    columns: dict[str, Any] = {
        "agg_runs": Count("id"),
        "agg_ticks": Coalesce(
            Sum("missed_count", filter=Q(status=Status.MISSED), output_field=BigIntegerField()),
            zero,
        ),
        "agg_timed": Count("duration"),
        "agg_duration_us": Coalesce(Sum(_Microseconds("duration")), zero),
    }
    for name, bound in DURATION_BUCKETS:
        columns[f"agg_{name}"] = Coalesce(
            Sum(
                Case(
                    When(duration__lte=dt.timedelta(seconds=bound), then=Value(1)),
                    default=Value(0),
                    output_field=IntegerField(),
                ),
                output_field=BigIntegerField(),
            ),
            zero,
        )
    columns["agg_last_started_at"] = Max("started_at")
    return columns


def forget_runs(runs: QuerySet[TaskRun] | Iterable[int], *, using: str | None = None) -> int:
    """Take the runs about to be deleted out of the aggregates; return how many were counted.

    ``runs`` is a queryset or primary keys. Call it in the transaction that deletes them,
    before the DELETE: one grouped query reads what they contributed, one statement takes it
    away, one adds it to :class:`RetiredRunCount` (so exported counters never go down), and
    the hours that lost their latest run get it back from the remaining runs. Retention
    pruning calls it per batch; the admin's delete action calls it too.
    """
    alias = using or router.db_for_write(TaskRunRollup)
    ids = list(runs.values_list("pk", flat=True) if isinstance(runs, QuerySet) else runs)
    if not ids:
        return 0
    aggregates = _aggregates()
    query: Any = (
        TaskRun.objects.using(alias)
        .filter(pk__in=ids, status__in=COUNTED_STATUSES)
        .annotate(bucket=TruncHour("started_at", tzinfo=dt.UTC))
        .values("scheduled_task_id", "status", "bucket")
        .annotate(**aggregates)
        .order_by()
    )
    grouped: list[dict[str, Any]] = list(query)
    if not grouped:
        return 0
    taken: list[dict[str, Any]] = []
    deleted: dict[tuple[int, str], dict[str, Any]] = {}
    for row in grouped:
        counters = {name: int(row[f"agg_{name}"] or 0) for name in COUNTER_COLUMNS}
        taken.append(
            {
                "scheduled_task_id": row["scheduled_task_id"],
                "status": row["status"],
                "hour": _aware(row["bucket"]),
                **{name: -value for name, value in counters.items()},
                "last_started_at": None,
            }
        )
        key = (row["scheduled_task_id"], row["status"])
        total = deleted.setdefault(
            key,
            {"scheduled_task_id": key[0], "status": key[1], "last_started_at": None}
            | dict.fromkeys(COUNTER_COLUMNS, 0),
        )
        for name, value in counters.items():
            total[name] += value
        latest = _aware(row["agg_last_started_at"])
        if latest is not None and (
            total["last_started_at"] is None or latest > total["last_started_at"]
        ):
            total["last_started_at"] = latest
    with transaction.atomic(using=alias):
        upsert_add(
            TaskRunRollup,
            ("scheduled_task_id", "status", "hour"),
            COUNTER_COLUMNS,
            taken,
            using=alias,
        )
        upsert_add(
            RetiredRunCount,
            ("scheduled_task_id", "status"),
            COUNTER_COLUMNS,
            list(deleted.values()),
            latest="last_started_at",
            using=alias,
        )
        _refresh_latest(taken, ids, alias)
    return sum(-row["runs"] for row in taken)


def _aware(value: Any) -> Any:
    if isinstance(value, str):  # SQLite returns truncated datetimes as text
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def _refresh_latest(taken: list[dict[str, Any]], deleting: list[int], alias: str) -> None:
    """Drop the rows left empty; give the others their latest remaining start (the deleted
    runs may have held it). One statement per touched hour row, bounded by the batch."""
    touched = Q()
    for row in taken:
        touched |= Q(
            scheduled_task_id=row["scheduled_task_id"], status=row["status"], hour=row["hour"]
        )
    rollups = TaskRunRollup.objects.using(alias).filter(touched)
    rollups.filter(runs__lte=0).delete()
    for rollup in rollups.filter(runs__gt=0).only("pk", "scheduled_task_id", "status", "hour"):
        latest = (
            TaskRun.objects.using(alias)
            .filter(
                scheduled_task_id=rollup.scheduled_task_id,
                status=rollup.status,
                started_at__gte=rollup.hour,
                started_at__lt=rollup.hour + dt.timedelta(hours=1),
            )
            .exclude(pk__in=deleting)
            .aggregate(latest=Max("started_at"))["latest"]
        )
        TaskRunRollup.objects.using(alias).filter(pk=rollup.pk).update(last_started_at=latest)


# --- computing them again -----------------------------------------------------------------------


def rebuild(task_ids: Iterable[int] | None = None, *, using: str | None = None) -> int:
    """Compute the aggregates of ``task_ids`` (all tasks by default) from the run history;
    return how many rows were written.

    One ``DELETE`` and one ``INSERT ... SELECT ... GROUP BY``, in one transaction: the database
    does the counting, so ten million runs take seconds on PostgreSQL, not a Python loop. On
    PostgreSQL the aggregate table is locked for writes meanwhile, so runs ending during the
    rebuild wait and are then added on top: the result is exact with workers running. On
    SQLite the transaction holds the only write lock. On MariaDB and MySQL run it when few runs
    end (a run ending during the rebuild may be counted twice or not at all).
    Retired-run counts (deleted runs, cancelled retries) are left as they are.
    """
    return rebuild_with(TaskRun, TaskRunRollup, task_ids, using=using)


def rebuild_with(
    run_model: type[Model],
    rollup_model: type[Model],
    task_ids: Iterable[int] | None = None,
    *,
    using: str | None = None,
) -> int:
    """:func:`rebuild` over the given model classes (the data migration passes its own)."""
    alias = using or router.db_for_write(rollup_model)
    connection = connections[alias]
    ids = None if task_ids is None else list(task_ids)
    runs = run_model._default_manager.using(alias).filter(status__in=COUNTED_STATUSES)
    old = rollup_model._default_manager.using(alias).all()
    if ids is not None:
        runs = runs.filter(scheduled_task_id__in=ids)
        old = old.filter(scheduled_task_id__in=ids)
    select = (
        runs.annotate(bucket=TruncHour("started_at", tzinfo=dt.UTC))
        .values("scheduled_task_id", "status", "bucket")
        .annotate(**_aggregates())
        .order_by()
    )
    query = select.query
    order = [*query.values_select, *query.annotation_select]
    expected = [
        "scheduled_task_id",
        "status",
        "bucket",
        *[f"agg_{name}" for name in COUNTER_COLUMNS],
        "agg_last_started_at",
    ]
    if order != expected:  # Django chose another column order: name them as it did
        raise RuntimeError(f"Unexpected SELECT column order {order}")
    sql, params = query.sql_with_params()
    quote = connection.ops.quote_name
    columns = ["scheduled_task_id", "status", "hour", *COUNTER_COLUMNS, "last_started_at"]
    insert = (
        f"INSERT INTO {quote(rollup_model._meta.db_table)} "
        f"({', '.join(quote(c) for c in columns)}) {sql}"
    )
    with transaction.atomic(using=alias):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    f"LOCK TABLE {quote(rollup_model._meta.db_table)} IN SHARE ROW EXCLUSIVE MODE"
                )
        old._raw_delete(alias)
        with connection.cursor() as cursor:
            cursor.execute(insert, params)
            return max(int(cursor.rowcount), 0)


# --- the size of the history -------------------------------------------------------------------


def estimated_rows(model: type[Model], *, using: str | None = None) -> int | None:
    """The database's own estimate of how many rows ``model``'s table holds, without counting
    them: PostgreSQL's planner statistics (``pg_class.reltuples``), MariaDB's and MySQL's
    ``information_schema.TABLES``. None where there is none (SQLite, or a table never analysed).
    """
    alias = using or router.db_for_read(model)
    connection = connections[alias]
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                [connection.ops.quote_name(table)],
            )
        elif connection.vendor == "mysql":
            cursor.execute(
                "SELECT TABLE_ROWS FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                [table],
            )
        else:
            return None
        row = cursor.fetchone()
    if row is None or row[0] is None or int(row[0]) < 0:
        return None
    return int(row[0])


# --- alerts -------------------------------------------------------------------------------------

ALERT_RESULTS = {
    NotificationDelivery.Status.SENT: AlertCount.Result.SENT,
    NotificationDelivery.Status.SUPPRESSED: AlertCount.Result.SUPPRESSED,
    NotificationDelivery.Status.FAILED: AlertCount.Result.FAILED,
}


def count_alert(channel_id: int, event: str, status: str, *, using: str | None = None) -> None:
    """Count one delivery that reached ``status`` (sent, suppressed or failed): one statement.
    Call it in the transaction (or right after the statement) that wrote that status."""
    result = ALERT_RESULTS.get(status)  # type: ignore[call-overload]
    if result is None:
        return
    alias = using or router.db_for_write(AlertCount)
    upsert_add(
        AlertCount,
        ("channel_id", "event", "result"),
        ("count",),
        [{"channel_id": channel_id, "event": event, "result": str(result), "count": 1}],
        using=alias,
    )


def rebuild_alert_counts_with(
    delivery_model: type[Model], count_model: type[Model], *, using: str | None = None
) -> int:
    """Count the deliveries again from their rows (the data migration's backfill)."""
    alias = using or router.db_for_write(count_model)
    rows = (
        delivery_model._default_manager.using(alias)
        .filter(status__in=list(ALERT_RESULTS))
        .values("channel_id", "event", "status")
        .annotate(total=Count("id"))
        .order_by()
    )
    with transaction.atomic(using=alias):
        count_model._default_manager.using(alias).all().delete()
        count_model._default_manager.using(alias).bulk_create(
            [
                count_model(
                    channel_id=row["channel_id"],
                    event=row["event"],
                    result=str(ALERT_RESULTS[row["status"]]),
                    count=row["total"],
                )
                for row in rows
            ]
        )
    return len(rows)
