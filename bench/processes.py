"""Celery worker subprocesses for the benchmarks, and what they cost in memory.

The process handling is the integration tests' own (tests/support/processes.py); the worker gets
the bench's throwaway database through ORCHESTRATOR_DB_NAME, as the integration tests' workers do.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from bench.env import ROOT
from tests.support.processes import CeleryProcess, subprocess_env, worker_args

LOG_DIR = ROOT / "test-artifacts" / "bench"


class Worker(CeleryProcess):
    """A ``celery worker`` on the bench's database and broker, with its pool's memory.

    A context manager: entering waits until the worker is ready, leaving stops it.
    """

    stop_timeout = 20.0

    def __init__(
        self,
        *,
        queues: list[str],
        concurrency: int,
        db_name: str,
        include: list[str] | None = None,
        settings: str = "tests.settings",
        env: dict[str, str] | None = None,
    ) -> None:
        from django.conf import settings as django_settings

        LOG_DIR.mkdir(parents=True, exist_ok=True)
        # An explicit node name (no %h) so control commands can address this worker alone.
        self.hostname = f"bench-{uuid.uuid4().hex[:8]}@localhost"
        super().__init__(
            worker_args(self.hostname, queues, concurrency, include=include),
            subprocess_env(db_name, django_settings.CELERY_BROKER_URL, settings, **(env or {})),
            LOG_DIR / f"{self.hostname.split('@')[0]}.log",
        )

    def __enter__(self) -> Worker:
        try:
            self.wait_for_log("ready.", timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def pool_pids(self) -> list[int]:
        """The prefork pool's processes: the ones that run the tasks."""
        return children_of(self.process.pid)

    def pool_rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.pool_pids())

    def main_rss_kib(self) -> int:
        return rss_kib(self.process.pid)


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc (Linux), so no psutil is needed."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 once it has ended)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
