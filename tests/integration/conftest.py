"""Real processes for integration tests: Celery workers and beat as subprocesses.

The tests run against the broker in CELERY_BROKER_URL (Redis, or RabbitMQ in its CI leg) and the
database in DATABASE_URL (PostgreSQL, or MariaDB/MySQL in its CI leg for the tests that leg
selects). When either is missing the tests are skipped, unless ORCHESTRATOR_REQUIRE_SERVICES
is set (as in CI), where they fail.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests.conftest import ARTIFACTS, services_required
from tests.support.processes import (  # noqa: F401  (wait_until, ROOT: for the test modules)
    ROOT,
    CeleryProcess,
    purge_queues,
    subprocess_env,
    wait_until,
    worker_args,
)


def _unavailable(reason: str) -> None:
    if services_required():
        pytest.fail(f"{reason} (ORCHESTRATOR_REQUIRE_SERVICES is set, so this fails, not skips)")
    pytest.skip(reason)


def _check_broker(url: str) -> None:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as err:
        _unavailable(f"broker {url.split('@')[-1]} is unreachable: {err}")


@pytest.fixture(scope="session")
def broker_url() -> str:
    url = settings.CELERY_BROKER_URL
    if not url or url.startswith("memory"):
        _unavailable("integration tests need CELERY_BROKER_URL (such as redis://127.0.0.1:6379/0)")
    _check_broker(url)
    return url


@pytest.fixture(scope="session")
def real_database(django_db_setup, django_db_blocker) -> str:
    if connection.vendor not in ("postgresql", "mysql"):
        _unavailable("integration tests need DATABASE_URL pointing at PostgreSQL or MariaDB/MySQL")
    with django_db_blocker.unblock():
        connection.ensure_connection()
    return connection.settings_dict["NAME"]


def log_path_for(request: pytest.FixtureRequest, kind: str, index: int) -> Path:
    """A log file named after the test and this pytest process.

    Parametrised ids may hold '/' or spaces; the process id keeps two sessions running the
    same test in one checkout from writing (and reading) each other's logs.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    folder = ARTIFACTS / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}-{kind}{index}-{os.getpid()}.log"


@pytest.fixture
def start_worker(
    broker_url: str, real_database: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., CeleryProcess]]:
    """Start a real Celery worker: ``start_worker(queues=["celery"], concurrency=1)``.

    ``loglevel="DEBUG"`` is for tests that read what the worker logs; the root level itself comes
    from the Django settings, since the worker does not hijack the root logger. ``include`` names
    extra modules the worker imports at start (hooks of the fault tests); ``pool="threads"`` runs
    the tasks in threads of one process; keyword arguments in capitals are environment variables
    of the worker (``CELERY_BROKER_URL`` among them).
    """
    started: list[CeleryProcess] = []

    def start(
        queues: list[str] | None = None,
        concurrency: int = 1,
        purge: bool = True,
        loglevel: str = "INFO",
        include: list[str] | None = None,
        pool: str = "prefork",
        **env: str,
    ) -> CeleryProcess:
        queues = queues or ["celery"]
        if purge:
            purge_queues(queues)
        name = f"w{uuid.uuid4().hex[:8]}@%h"
        log_path = log_path_for(request, "worker", len(started))
        worker = CeleryProcess(
            worker_args(name, queues, concurrency, loglevel, include, pool),
            subprocess_env(real_database, broker_url, **env),
            log_path,
        )
        started.append(worker)
        worker.wait_for_log("ready.", timeout=60)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def start_beat(
    broker_url: str, real_database: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., CeleryProcess]]:
    """Start real ``celery beat``: ``start_beat()`` with orchestrator's scheduler.

    ``scheduler=`` names another (django-celery-beat's DatabaseScheduler for the tests that
    compare); ``wait`` is the log line that says it started; keyword arguments in capitals are
    environment variables of the process.
    """
    started: list[CeleryProcess] = []

    def start(
        scheduler: str = "orchestrator.scheduler:Scheduler",
        wait: str = "beat: Starting",
        max_interval: float = 1,
        **env: str,
    ) -> CeleryProcess:
        log_path = log_path_for(request, "beat", len(started))
        beat = CeleryProcess(
            [
                "beat",
                "--loglevel=DEBUG",
                f"--scheduler={scheduler}",
                f"--max-interval={max_interval:g}",
                # Each beat its own pid file: several run side by side in the HA tests.
                f"--pidfile={log_path.with_suffix('.pid')}",
                f"--schedule={log_path.with_suffix('.schedule')}",
            ],
            subprocess_env(real_database, broker_url, **env),
            log_path,
        )
        started.append(beat)
        beat.wait_for_log(wait, timeout=60)
        return beat

    yield start
    for beat in started:
        beat.stop()
