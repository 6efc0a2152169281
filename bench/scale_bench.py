"""Pages at scale: the dashboard, the admin lists and the API over a long run history.

Builds (PostgreSQL, bulk SQL: ``INSERT ... SELECT`` over ``generate_series``) 1,000 scheduled
tasks and 10,000,000 runs spread over the last 30 days, about one run per task every four
minutes: mostly successes, with skipped runs, retried attempts, final failures and a few lost
attempts, durations from a fraction of a second to a minute. Then it asks each page through
Django's test client as a superuser: one warm-up request (its SQL statements counted with
``CaptureQueriesContext``), then the median of three timed requests.

Beside each page it times the baseline: the history-scanning queries that page ran before the
per-task aggregates (``bench/scale_legacy.py``), on the same data in the same run. The target
is 150 ms per page.

The data is kept between runs (loading 10 million rows takes minutes): a marker table says
what was built and when, and a run with the same ``--tasks`` and ``--runs`` less than a day
later reuses it (``--rebuild`` builds it again).
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.env import table

DEFAULT_TASKS = 1_000
DEFAULT_RUNS = 10_000_000
SMOKE_TASKS = 20
SMOKE_RUNS = 20_000
HISTORY_DAYS = 30
CHUNK_ROWS = 1_000_000
TIMED_REQUESTS = 3
TARGET_MS = 150
REUSE_FOR = dt.timedelta(days=1)
MARKER_TABLE = "bench_scale_dataset"
ADMIN_USER = "bench-scale-admin"
CATEGORIES = ("billing", "reports", "sync", "cleanup", "")
QUEUES = ("", "reports", "billing")


def main(
    smoke: bool = False,
    runs: int | None = None,
    tasks: int | None = None,
    rebuild: bool = False,
) -> str:
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("the scale benchmark builds its history with PostgreSQL's SQL")
    tasks = tasks or (SMOKE_TASKS if smoke else DEFAULT_TASKS)
    runs = runs or (SMOKE_RUNS if smoke else DEFAULT_RUNS)
    dataset = ensure_dataset(tasks, runs, rebuild=rebuild)
    results = measure_pages(dataset["task_id"])
    rows = [
        [
            name,
            result["queries"],
            result["median_ms"],
            result["baseline_ms"],
            "met" if result["median_ms"] <= TARGET_MS else "missed",
        ]
        for name, result in results.items()
    ]
    header = (
        f"{tasks:,} scheduled tasks, {runs:,} runs over {HISTORY_DAYS} days; data "
        f"{dataset['origin']}. Aggregates: {dataset['aggregates']}.\n"
        f"Median of {TIMED_REQUESTS} requests after a warm-up (Django test client); queries "
        "counted on the warm-up. Baseline: the history queries the page ran before the "
        "per-task aggregates (bench/scale_legacy.py), alone (no template), timed on the same "
        "data: a lower bound of the old page.\n"
    )
    return (
        header
        + "\n"
        + table(
            [
                "page",
                "queries",
                "median ms (new)",
                "baseline median ms",
                f"target <= {TARGET_MS} ms",
            ],
            rows,
        )
    )


# --- the data -----------------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"  [scale] {message}", file=sys.stderr, flush=True)


def ensure_dataset(tasks: int, runs: int, *, rebuild: bool) -> dict[str, Any]:
    """Build the history unless the database holds this one already; say which task to show."""
    from django.db import connection

    from orchestrator import rollups
    from orchestrator.models import ScheduledTask

    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (tasks integer NOT NULL, runs bigint "
            "NOT NULL, built_at timestamptz NOT NULL, aggregates boolean NOT NULL)"
        )
        cursor.execute(f"SELECT tasks, runs, built_at, aggregates FROM {MARKER_TABLE}")
        marker = cursor.fetchone()
    now = dt.datetime.now(dt.UTC)
    reusable = (
        not rebuild
        and marker is not None
        and (marker[0], marker[1]) == (tasks, runs)
        and now - marker[2] < REUSE_FOR
        and ScheduledTask.objects.count() == tasks
    )
    if reusable:
        origin = f"reused (built {marker[2]:%Y-%m-%d %H:%M} UTC)"
        aggregates_built = marker[3]
    else:
        started = time.perf_counter()
        build(tasks, runs, now)
        origin = f"built in {time.perf_counter() - started:,.0f} s"
        aggregates_built = False
    if aggregates_built:
        aggregates = "orchestrator.rollups, built with the data"
    else:
        started = time.perf_counter()
        rollups.rebuild()
        aggregates = f"orchestrator.rollups.rebuild() in {time.perf_counter() - started:,.1f} s"
        aggregates_built = True
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {MARKER_TABLE}")
        cursor.execute(
            f"INSERT INTO {MARKER_TABLE} (tasks, runs, built_at, aggregates) "
            "VALUES (%s, %s, %s, %s)",
            [tasks, runs, marker[2] if reusable else now, aggregates_built],
        )
    first = ScheduledTask.objects.order_by("pk").values_list("pk", flat=True).first()
    assert first is not None
    return {"origin": origin, "aggregates": aggregates, "task_id": first + tasks // 2}


def build(tasks: int, runs: int, now: dt.datetime) -> None:
    """Empty orchestrator's tables and load ``tasks`` tasks and ``runs`` runs ending ``now``."""
    from django.db import connection, transaction

    from orchestrator.models import ScheduledTask, TaskDefinition

    _progress(f"building {tasks:,} tasks and {runs:,} runs (this takes a while at full size)")
    with connection.cursor() as cursor:
        # Every table that refers to the tasks goes with them (runs, states, deliveries, the
        # change history, and any aggregate table).
        cursor.execute(
            f"TRUNCATE {ScheduledTask._meta.db_table}, {TaskDefinition._meta.db_table} "
            "RESTART IDENTITY CASCADE"
        )
    with transaction.atomic():
        definitions = TaskDefinition.objects.bulk_create(
            TaskDefinition(
                name=f"bench-definition-{i}",
                import_path="tests.sample_tasks.noop",
                category=CATEGORIES[i % len(CATEGORIES)],
            )
            for i in range(10)
        )
        # bulk_create: no beat entry and no change history per task, which the pages do not read.
        created = ScheduledTask.objects.bulk_create(
            ScheduledTask(
                name=f"bench-task-{i:05d}",
                task_definition=definitions[i % len(definitions)],
                cron=f"{i % 5}-59/5 * * * *",
                timezone="UTC",
                kwargs={},
                queue=QUEUES[i % len(QUEUES)],
                enabled=i % 50 != 7,
            )
            for i in range(tasks)
        )
    ids = sorted(task.pk for task in created)
    assert ids[-1] - ids[0] + 1 == tasks, "the task ids must be contiguous"
    _load_runs(ids[0], tasks, runs, now)
    _load_states()
    with connection.cursor() as cursor:
        _progress("ANALYZE")
        cursor.execute("ANALYZE")


def _run_columns() -> tuple[list[str], list[str], list[Any]]:
    """The INSERT's columns and, for each, its SQL expression over ``s`` (``g``: the row's
    number, ``h``: a hash of it from 0 to 999 that draws its status) and its parameters.

    Columns not named here get their model default, so a column added later (by another
    migration) is filled too.
    """
    from django.db import connection

    from orchestrator.models import TaskRun

    failed = "s.h < 5"
    retried = "s.h >= 5 AND s.h < 15"
    lost = "s.h = 15"
    skipped = "s.h >= 16 AND s.h < 26"
    duration = (
        f"CASE WHEN {skipped} THEN interval '0' "
        "ELSE make_interval(secs => 0.2 + mod(s.h * 37, 600) / 10.0) END"
    )
    expressions = {
        "scheduled_task_id": "%(first_task)s + mod(s.g, %(tasks)s)",
        "attempt": f"CASE WHEN {failed} THEN 3 WHEN {retried} THEN 1 + mod(s.g, 2) ELSE 1 END",
        "max_attempts": "3",
        "status": (
            f"CASE WHEN {failed} THEN 'failed' WHEN {retried} THEN 'retried' "
            f"WHEN {lost} THEN 'lost' WHEN {skipped} THEN 'skipped' ELSE 'succeeded' END"
        ),
        "trigger": "CASE WHEN s.h >= 26 AND s.h < 30 THEN 'manual' ELSE 'schedule' END",
        "started_at": "s.started_at",
        "finished_at": f"s.started_at + {duration}",
        "duration": duration,
        "error_type": (
            f"CASE WHEN {failed} OR {retried} THEN 'ConnectionError' "
            f"WHEN {lost} THEN 'TimeLimitExceeded' ELSE '' END"
        ),
        "error_message": (
            f"CASE WHEN {failed} OR {retried} THEN 'upstream timed out after 30 s' "
            f"WHEN {lost} THEN 'Killed by the worker at its hard time limit.' "
            f"WHEN {skipped} THEN 'Skipped: the task is paused.' ELSE '' END"
        ),
        "celery_task_id": "md5(s.g::text)",
        "worker": "'worker-' || mod(s.g, 4) || '@bench'",
        "queue": "'celery'",
        "next_retry_at": f"CASE WHEN {retried} THEN s.started_at + interval '1 minute' END",
        "retry_sent_at": f"CASE WHEN {retried} THEN s.started_at + interval '1 second' END",
        "scheduled_for": "date_trunc('minute', s.started_at)",
        "task_version": "1",
    }
    columns, sql, params = [], [], []
    for field in TaskRun._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.column in expressions:
            sql.append(expressions[field.column])
        elif field.null and not field.has_default():
            sql.append("NULL")
        else:
            sql.append("%(" + field.column + ")s")
            params.append((field.column, field.get_db_prep_save(field.get_default(), connection)))
    return columns, sql, params


def _load_runs(first_task: int, tasks: int, runs: int, now: dt.datetime) -> None:
    from django.db import connection

    from orchestrator.models import TaskRun

    columns, expressions, defaults = _run_columns()
    start = now - dt.timedelta(days=HISTORY_DAYS)
    step = HISTORY_DAYS * 86400 / runs  # seconds between two runs of the fleet
    statement = (
        f"INSERT INTO {TaskRun._meta.db_table} ({', '.join(columns)}) "
        f"SELECT {', '.join(expressions)} FROM ("
        "SELECT g, mod(hashint8(g)::bigint + 2147483648, 1000) AS h, "
        "%(start)s::timestamptz + make_interval(secs => g * %(step)s) AS started_at "
        "FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS g) AS s"
    )
    table_name = TaskRun._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        # Building an index once over the loaded rows is several times faster than updating it
        # row by row: the table's plain indexes go and come back after the load (the ones
        # behind constraints, the primary key and tick_key's, stay).
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = %s AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
            [table_name, table_name],
        )
        indexes = cursor.fetchall()
        for index_name, _ in indexes:
            cursor.execute(f"DROP INDEX {connection.ops.quote_name(index_name)}")
        loaded_at = time.perf_counter()
        for low in range(0, runs, CHUNK_ROWS):
            high = min(low + CHUNK_ROWS, runs) - 1
            params = {
                "first_task": first_task,
                "tasks": tasks,
                "start": start,
                "step": step,
                "low": low,
                "high": high,
                **dict(defaults),
            }
            cursor.execute(statement, params)
            rate = (high + 1) / (time.perf_counter() - loaded_at)
            _progress(f"{high + 1:,} of {runs:,} runs ({rate:,.0f} rows/s)")
        cursor.execute("SET maintenance_work_mem = '512MB'")
        for index_name, definition in indexes:
            _progress(f"index {index_name}")
            cursor.execute(definition)
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("SET synchronous_commit = on")


def _load_states() -> None:
    """Each task's state as the dispatcher would have left it: its last final outcome."""
    from django.db import connection

    from orchestrator.models import ScheduledTask, TaskRun, TaskState

    runs = TaskRun._meta.db_table
    tasks = ScheduledTask._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT t.id, r.status, r.started_at FROM {tasks} t CROSS JOIN LATERAL ("
            f"SELECT status, started_at FROM {runs} WHERE scheduled_task_id = t.id "
            "AND status IN ('succeeded', 'failed', 'lost') "
            "ORDER BY started_at DESC, id DESC LIMIT 1) r"
        )
        rows = cursor.fetchall()
    TaskState.objects.bulk_create(
        TaskState(
            scheduled_task_id=task_id,
            last_final_status=status,
            last_final_at=started_at,
            consecutive_failures=0 if status == "succeeded" else 1,
        )
        for task_id, status, started_at in rows
    )


# --- the measurements ---------------------------------------------------------------------------


def _client() -> Any:
    from django.contrib.auth.models import User
    from django.test import Client

    # No setup_test_environment(): its instrumented template rendering copies the context at
    # every template and include, which would add seconds to a page of 1,000 rows that a real
    # request never pays. The test settings allow any host.
    user = User.objects.filter(username=ADMIN_USER).first()
    if user is None:
        user = User.objects.create_superuser(ADMIN_USER, password="bench")
    client = Client()
    client.force_login(user)
    return client


def pages(task_id: int) -> dict[str, str]:
    from django.urls import reverse

    return {
        "dashboard overview": reverse("orchestrator:dashboard"),
        "dashboard overview, last run failed": reverse("orchestrator:dashboard") + "?status=failed",
        "dashboard task page": reverse("orchestrator:task-detail", args=[task_id]),
        "admin run list": reverse("admin:orchestrator_taskrun_changelist"),
        "admin scheduled task list": reverse("admin:orchestrator_scheduledtask_changelist"),
        "API runs list": reverse("orchestrator:api-run-list"),
    }


def _median_ms(call: Callable[[], Any]) -> float:
    timings = []
    for _ in range(TIMED_REQUESTS):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def measure_pages(task_id: int) -> dict[str, dict[str, Any]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench import scale_legacy

    client = _client()
    baselines = scale_legacy.baselines(task_id)
    results: dict[str, dict[str, Any]] = {}
    for name, url in pages(task_id).items():

        def get(url: str = url) -> Any:
            response = client.get(url)
            if response.status_code != 200:
                raise SystemExit(f"{url} answered {response.status_code}")
            return response

        with CaptureQueriesContext(connection) as queries:
            get()  # the warm-up: caches, compiled templates, the database's buffers
        # Read now: captured_queries slices the connection's log, which the next request empties.
        statements = len(queries.captured_queries)
        median = _median_ms(get)
        baseline = baselines[name]
        baseline()  # its own warm-up
        results[name] = {
            "queries": statements,
            "median_ms": median,
            "baseline_ms": _median_ms(baseline),
        }
        _progress(f"{name}: {median:,.0f} ms, baseline {results[name]['baseline_ms']:,.0f} ms")
    return results
