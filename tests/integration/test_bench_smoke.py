"""CI runs the benchmarks at a small N: `python -m bench --smoke` exits 0 and prints its tables.

The command starts its own workers and creates and drops its own database, so this test needs
no database of its own, only the services: PostgreSQL in DATABASE_URL and the broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.integration.conftest import ROOT, _unavailable

pytestmark = pytest.mark.integration

BENCHMARKS = ("beat_sync", "dispatch", "alert_storm", "scheduler", "retention", "scale")


def bench_database_url() -> str:
    """DATABASE_URL with another database name.

    The bench creates and drops ``test_<name>``, which is also the name pytest-django gives
    this session's test database: the bench must not drop it under the running tests.
    """
    url = os.environ.get("DATABASE_URL", "")
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        _unavailable("the benchmarks need DATABASE_URL pointing at PostgreSQL")
    name = parts.path.lstrip("/") or "postgres"
    return urlunsplit(parts._replace(path=f"/{name}_bench"))


def sections(output: str) -> dict[str, str]:
    """The text under each ``## <benchmark>`` heading."""
    found = {}
    for chunk in output.split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        found[title.strip()] = body
    return found


def test_the_smoke_benchmark_prints_a_table_per_benchmark(broker_url: str) -> None:
    env = dict(os.environ, DATABASE_URL=bench_database_url(), CELERY_BROKER_URL=broker_url)
    env.pop("ORCHESTRATOR_DB_NAME", None)  # would point the bench's settings at another database
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"

    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # about three minutes on a quiet two-core machine (beat waits for ticks)
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    found = sections(result.stdout)
    assert list(found) == list(BENCHMARKS), result.stdout
    for name, body in found.items():
        lines = [line for line in body.splitlines() if line.startswith("|")]
        # A header, the separator and at least one row of numbers.
        assert len(lines) >= 3 and lines[1].startswith("|---"), (name, body)
