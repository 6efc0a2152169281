"""The test legs that CI (`.ci/run`) runs beside `make test`, one nox session each.

    nox -l                                     # list them
    nox -s "unit(python='3.12', django='6.0')"  # the unit suite on Python 3.12, Django 6.0
    nox -t matrix                              # every Python/Django pair of the unit suite
    nox -s rabbitmq                            # a service leg (the services must answer)

Service legs use this machine's PostgreSQL, Redis, RabbitMQ and MariaDB (or POSTGRES_URL,
REDIS_URL, RABBITMQ_URL, MARIADB_URL) with databases, Redis databases and a vhost of their own,
named after ORCHESTRATOR_CI_NAME, so legs can run side by side. Integration tests
there fail, never skip, when a service is missing (ORCHESTRATOR_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import nox

nox.needs_version = ">=2024.10.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = []  # run legs by name or tag: there is no default set

ROOT = Path(__file__).resolve().parent

# pyenv installs every Python under ~/.pyenv/versions without putting each on PATH; nox looks
# for python3.X there.
_pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
if _pyenv.is_dir():
    _bins = [str(p / "bin") for p in sorted(_pyenv.glob("3.*")) if (p / "bin").is_dir()]
    os.environ["PATH"] = os.pathsep.join([*_bins, os.environ.get("PATH", "")])

# Django release -> the Pythons it supports among ours. Keep in step with pyproject.toml's
# classifiers and the "Tested with" line of the README. Django 4.2 is past its end of support
# (April 2026), and orchestrator needs Django 5.0's callable choices and the minimum value
# validators that later releases give positive integer fields.
DJANGO_PYTHONS = {
    "5.2": ["3.11", "3.12", "3.13"],
    "6.0": ["3.12", "3.13"],
}
DJANGO_PINS = {"5.2": "Django~=5.2.0", "6.0": "Django~=6.0.0"}
NEWEST = ("3.13", "6.0")
SERVICE_PAIR = ("3.12", "5.2")  # RabbitMQ and MariaDB legs: the LTS most projects run

UNIT = "not integration and not browser"
PYTEST = ["pytest", "-p", "no:cacheprovider", "-ra", "--durations=15"]
# The unit suite in two processes (pytest-xdist): its slowest tests wait on demo subprocesses.
# Never the integration tests, whose workers share the broker's queues.
XDIST = ["-n", "2"]


def _install(session: nox.Session, django: str, *extras: str) -> None:
    extra = ",".join(["test", *extras])
    session.install("-e", f".[{extra}]", DJANGO_PINS[django])


def _services_env(**env: str) -> dict[str, str]:
    return {"ORCHESTRATOR_REQUIRE_SERVICES": "1", **env}


@nox.session(tags=["matrix"])
@nox.parametrize(
    "python,django",
    [(python, django) for django, pythons in DJANGO_PYTHONS.items() for python in pythons],
)
def unit(session: nox.Session, django: str) -> None:
    """The unit suite on SQLite: no broker, no server."""
    _install(session, django)
    tmp = Path(session.create_tmp())
    session.run(
        *PYTEST,
        *XDIST,
        "-m",
        UNIT,
        *session.posargs,
        env={
            "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
            "CELERY_BROKER_URL": "memory://",
        },
    )


# --- service legs ---------------------------------------------------------------------------
# Base addresses of this machine's services; each leg adds a database, Redis db or vhost of its
# own, named after ORCHESTRATOR_CI_NAME, so that legs (and checkouts) running at once never
# share a queue or a table.
POSTGRES_URL = os.environ.get("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
MARIADB_URL = os.environ.get("MARIADB_URL", "mysql://root@127.0.0.1:3306")
NAME = os.environ.get("ORCHESTRATOR_CI_NAME", "orchestrator")
REDIS_DB_BASE = int(os.environ.get("ORCHESTRATOR_CI_REDIS_DB_BASE", "0"))
REDIS_DB = {"integration": 1, "mariadb": 2, "package": 3}


def _redis(leg: str) -> str:
    return f"{REDIS_URL}/{REDIS_DB_BASE + REDIS_DB[leg]}"


# What the MariaDB leg runs beyond the unit suite: the tests of the guarantees that rest on the
# database (one sync at a time, one run per tick, the dispatcher's rows, orchestrator's scheduler
# writing its ticks, its lease handed over when the leader is killed: one minute of the failover
# test, whose five minutes the main leg runs on PostgreSQL).
MARIADB_INTEGRATION = [
    "tests/integration/test_concurrent_beat_sync.py",
    "tests/integration/test_worker.py",
    "tests/integration/test_beat_scheduler.py",
    "tests/integration/test_faults.py::test_two_real_beats_run_each_tick_once",
    "tests/integration/test_scheduler_beat.py::"
    "test_every_minute_schedules_are_all_sent_in_the_minute_they_fall_due",
    "tests/integration/test_scheduler_ha.py",
]


# The integration tests the newest pair leaves to the main leg (see integration below).
NOT_ON_NEWEST = [
    "tests/integration/test_bench_smoke.py",
    "tests/integration/test_scheduler_ha.py",
    "tests/integration/test_watchdog.py",
]

# What the RabbitMQ leg runs: the tests whose outcome depends on the broker (retries and ETAs
# through it, priorities, acknowledgement when a worker or the connection dies, revoking, alerts
# sent as messages, what beat publishes). The others only wait on PostgreSQL and the clock.
BROKER_INTEGRATION = [
    "tests/integration/test_worker.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_long_retries.py",
    "tests/integration/test_operator_controls.py",
    "tests/integration/test_beat_scheduler.py",
    "tests/integration/test_scheduler_beat.py::"
    "test_every_minute_schedules_are_all_sent_in_the_minute_they_fall_due",
    "tests/notifications/test_integration.py",
]


@nox.session(python=NEWEST[0], tags=["services"])
def integration(session: nox.Session) -> None:
    """The integration suite on the newest pair (Python 3.13, Django 6.0): PostgreSQL, Redis."""
    _install(session, NEWEST[1])
    env = _services_env(
        DATABASE_URL=f"{POSTGRES_URL}/{NAME}_newest", CELERY_BROKER_URL=_redis("integration")
    )
    session.run(
        *PYTEST,
        "-m",
        "integration and not browser",
        # The benchmarks' smoke run measures throughput, not compatibility, and the scheduler's
        # failover and the watchdog's outage (six and five minutes of waiting for the clock) use
        # no API that differs between Django releases: the main leg runs them.
        *[arg for path in NOT_ON_NEWEST for arg in ("--deselect", path)],
        *session.posargs,
        env=env,
    )


def _rabbitmq_vhost(session: nox.Session) -> str:
    """The leg's own virtual host, made if rabbitmqctl is here (CI re-creates it empty)."""
    vhost = f"{NAME}_rabbitmq"
    if shutil.which("rabbitmqctl"):
        session.run("rabbitmqctl", "-q", "add_vhost", vhost, external=True, success_codes=[0, 70])
        session.run(
            "rabbitmqctl",
            "-q",
            "set_permissions",
            "-p",
            vhost,
            "guest",
            ".*",
            ".*",
            ".*",
            external=True,
        )
    return vhost


@nox.session(python=SERVICE_PAIR[0], tags=["services"])
def rabbitmq(session: nox.Session) -> None:
    """The broker-dependent integration tests with RabbitMQ as the broker, on PostgreSQL."""
    _install(session, SERVICE_PAIR[1])
    vhost = _rabbitmq_vhost(session)
    env = _services_env(
        DATABASE_URL=f"{POSTGRES_URL}/{NAME}_rabbitmq", CELERY_BROKER_URL=f"{RABBITMQ_URL}/{vhost}"
    )
    session.run(*PYTEST, "-m", "integration", *BROKER_INTEGRATION, *session.posargs, env=env)


@nox.session(python=SERVICE_PAIR[0], tags=["services"])
def mariadb(session: nox.Session) -> None:
    """The unit suite, then the database-bound integration tests, on MariaDB with Redis."""
    _install(session, SERVICE_PAIR[1], "mysql")
    env = _services_env(DATABASE_URL=f"{MARIADB_URL}/{NAME}", CELERY_BROKER_URL=_redis("mariadb"))
    unit_env = {**env, "CELERY_BROKER_URL": "memory://"}
    session.run(*PYTEST, *XDIST, "-m", UNIT, *session.posargs, env=unit_env)
    session.run(
        *PYTEST, *MARIADB_INTEGRATION, *session.posargs, env={**env, "ORCHESTRATOR_HA_MINUTES": "1"}
    )


@nox.session(python=NEWEST[0])
def package(session: nox.Session) -> None:
    """Build, twine check, then follow the README's "In your project" with the wheel."""
    session.install("build>=1.2", "twine>=6")
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    built = sorted(dist.iterdir())
    session.run("twine", "check", "--strict", *map(str, built))
    (wheel,) = [path for path in built if path.suffix == ".whl"]
    _check_wheel_contents(session, wheel)

    database = f"{NAME}_package"
    session.run(
        "dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", database, external=True
    )
    session.run("createdb", "-h", "127.0.0.1", "-U", "postgres", database, external=True)
    broker = _redis("package")
    session.run("redis-cli", "-u", broker, "flushdb", external=True)
    session.run(
        "python",
        str(ROOT / "scripts" / "check_package.py"),
        "--wheel",
        str(wheel),
        "--workdir",
        str(tmp / "project"),
        "--database-url",
        f"{POSTGRES_URL}/{database}",
        "--broker-url",
        broker,
    )


def _check_wheel_contents(session: nox.Session, wheel: Path) -> None:
    """The wheel holds the package data users need, and nothing of the tests."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    needed = {
        "orchestrator/py.typed",
        "orchestrator/migrations/0001_initial.py",
        "orchestrator/templates/orchestrator/email/alert.txt",
    }
    missing = sorted(needed - names)
    stray = sorted(name for name in names if name.startswith(("tests/", "demo/", "bench/")))
    if missing or stray:
        session.error(f"wheel {wheel.name}: missing {missing}, stray {stray}")
    static = [name for name in names if name.startswith("orchestrator/static/")]
    session.log(f"{wheel.name}: {len(names)} files, {len(static)} static, py.typed included")


@nox.session(python=NEWEST[0])
def mypy(session: nox.Session) -> None:
    """mypy with django-stubs and celery-types (configuration in pyproject.toml)."""
    session.install("-e", ".[typing]")
    session.run("mypy", *session.posargs)


@nox.session(python=NEWEST[0])
def docs(session: nox.Session) -> None:
    """The documentation site, built with --strict: a broken link or anchor fails."""
    session.install("-e", ".[docs]")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", str(Path(session.create_tmp()) / "site")
    )
