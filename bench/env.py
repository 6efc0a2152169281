"""Django set-up for benchmarks: the test settings, on a throwaway database."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The schedule of the tasks whose runs a benchmark sends itself: due once a year (1 January at
# midnight), so that the workers' watchdog finds no tick of theirs without a run. With "* * * *
# *" it wrote a `missed` row for each of them every pass, among the very rows whose first start
# and last finish give the dispatch rate: the dispatcher's blocks looked twice as slow.
SENT_BY_BENCH_CRON = "0 0 1 1 *"


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()


@contextmanager
def throwaway_database() -> Iterator[str]:
    """Create the test database (``test_<name>``), migrate it, and drop it afterwards."""
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases

    old_config = setup_databases(verbosity=0, interactive=False, keepdb=False)
    try:
        yield connection.settings_dict["NAME"]
    finally:
        if connection.vendor == "postgresql":
            # A benchmark's worker that has just stopped may still hold a session for a moment;
            # PostgreSQL refuses to drop a database in use.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        teardown_databases(old_config, verbosity=0)


@contextmanager
def kept_database(benchmark: str) -> Iterator[str]:
    """Use the database ``<name>_<benchmark>`` (PostgreSQL), created and migrated if needed,
    and keep it afterwards: for data that takes minutes to build."""
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit(f"the {benchmark} benchmark needs PostgreSQL in DATABASE_URL")
    base = connection.settings_dict["NAME"]
    name = f"{base}_{benchmark}"
    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f"CREATE DATABASE {connection.ops.quote_name(name)}")
    connection.close()
    connection.settings_dict["NAME"] = name
    try:
        # New migrations (such as another branch's aggregates) apply to the kept data too.
        call_command("migrate", verbosity=0, interactive=False)
        yield name
    finally:
        connection.close()
        connection.settings_dict["NAME"] = base


@dataclass
class Measurement:
    seconds: float
    queries: int
    result: Any = None


def measure(func: Callable[[], Any]) -> Measurement:
    """Wall time and SQL statements of one call."""
    from django.db import connection

    count = 0

    def counter(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any):
        nonlocal count
        count += 1
        return execute(sql, params, many, context)

    # execute_wrapper counts every statement; CaptureQueriesContext keeps only the last 9,000.
    with connection.execute_wrapper(counter):
        start = time.perf_counter()
        result = func()
        elapsed = time.perf_counter() - start
    return Measurement(elapsed, count, result)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if value < 100 else f"{value:,.1f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
