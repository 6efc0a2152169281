"""Celery workers and beat as subprocesses, for the integration tests and the benchmarks.

Free of pytest so that ``python -m bench`` uses the same code as the test fixtures in
tests/integration/conftest.py. Each process runs the test project's Celery app
(``celery -A tests.celery_app``) against the database named in ORCHESTRATOR_DB_NAME.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]

_T = TypeVar("_T")


def subprocess_env(
    db_name: str, broker: str, settings_module: str = "tests.settings", **extra: str
) -> dict[str, str]:
    """The environment of a Celery subprocess: this checkout, that database, that broker."""
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": settings_module,
            "ORCHESTRATOR_DB_NAME": db_name,
            "CELERY_BROKER_URL": broker,
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def worker_args(
    hostname: str,
    queues: list[str],
    concurrency: int,
    loglevel: str = "INFO",
    include: list[str] | None = None,
    pool: str = "prefork",
) -> list[str]:
    """``celery worker`` arguments: a prefork pool unless ``pool`` says otherwise, none of the
    cluster chatter tests don't need."""
    return [
        "worker",
        f"--loglevel={loglevel}",
        f"--hostname={hostname}",
        f"--queues={','.join(queues)}",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        *([f"--include={','.join(include)}"] if include else []),
    ]


class CeleryProcess:
    """A ``celery`` subprocess in its own session, whose output goes to ``log_path``."""

    stop_timeout = 15.0

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_app", *args],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"process exited early:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{text!r} not seen in {timeout}s:\n{self.log()[-4000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group: the main process and its pool."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        """A warm shutdown first, so the log ends cleanly; SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()


def purge_queues(queues: list[str]) -> None:
    """Empty ``queues`` on the current broker, so an earlier crashed run leaves nothing behind."""
    from tests.celery_app import app

    with app.connection_for_write() as conn:
        for queue in queues:
            with contextlib.suppress(Exception):
                conn.default_channel.queue_purge(queue)


def delete_queues(queues: list[str]) -> None:
    """Delete ``queues`` (made for one run, with a unique name) and what they still hold, so
    a broker that keeps queues (RabbitMQ) is not left with one per run."""
    from tests.celery_app import app

    with app.connection_for_write() as conn:
        for queue in queues:
            with contextlib.suppress(Exception):
                conn.default_channel.queue_delete(queue)


def wait_until(
    predicate: Callable[[], _T], timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> _T:
    """Poll ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or 'condition'} not met within {timeout:.0f}s")
        time.sleep(interval)
