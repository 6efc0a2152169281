"""Celery worker subprocesses for the benchmarks, and what they cost in memory.

Modelled on the integration tests' fixtures (tests/integration/conftest.py) but free of pytest:
the benchmarks run as a plain command. The worker gets the bench's throwaway database through
ORCHESTRATOR_DB_NAME, as the integration tests' workers do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.env import ROOT

LOG_DIR = ROOT / "test-artifacts" / "bench"


class Worker:
    """A ``celery worker`` subprocess whose output goes to a log file under test-artifacts/."""

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
        self.log_path = LOG_DIR / f"{self.hostname.split('@')[0]}.log"
        args = [
            "worker",
            "--loglevel=INFO",
            f"--hostname={self.hostname}",
            f"--queues={','.join(queues)}",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        if include:
            args.append(f"--include={','.join(include)}")
        full_env = dict(os.environ)
        full_env.update(
            {
                "DJANGO_SETTINGS_MODULE": settings,
                "ORCHESTRATOR_DB_NAME": db_name,
                "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
                "PYTHONPATH": str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", ""),
                "PYTHONUNBUFFERED": "1",
            }
        )
        full_env.update(env or {})
        self._log = open(self.log_path, "w")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_app", *args],
            env=full_env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def __enter__(self) -> Worker:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.log()[-4000:]}")

    def pool_pids(self) -> list[int]:
        """The prefork pool's processes: the ones that run the tasks."""
        return children_of(self.process.pid)

    def pool_rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.pool_pids())

    def main_rss_kib(self) -> int:
        return rss_kib(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            # Warm shutdown first, so the log ends cleanly; the whole session if it hangs.
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


def purge(queues: list[str]) -> None:
    """Empty ``queues`` on the bench's broker, so a crashed earlier run leaves nothing behind."""
    from tests.celery_app import app

    with app.connection_for_write() as conn:
        for queue in queues:
            with contextlib.suppress(Exception):
                conn.default_channel.queue_purge(queue)


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


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = ""
) -> object:
    """Poll ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or 'condition'} not met within {timeout:.0f}s")
        time.sleep(interval)
