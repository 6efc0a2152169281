"""The demo (`make demo` = `python demo/run.py`): settings, example jobs, and the launcher itself.

The launcher tests start the real thing as a subprocess: migrations on a fresh SQLite file in a
temporary DEMO_DIR, kombu's filesystem broker, runserver, a Celery worker and beat. They need no
external service, but they start real processes and take most of a minute each, so they are
marked ``integration`` like the other tests of real processes (``-m "not integration"`` is the
quick unit run).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import services_required

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
RUN = DEMO / "run.py"
START_TIMEOUT = 60.0
CHECK_TIMEOUT = 120.0
DEMO_REDIS_DB = 11


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_env(demo_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh demo: SQLite and the filesystem broker, whatever CI exports."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE", "DEMO_CHECK")
    }
    env.update({"DEMO_DIR": str(demo_dir), "DEMO_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def session_pids(session_id: int) -> list[int]:
    """Every live process of a session: run.py started it, so the children are in it too."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # Fields after the parenthesised command: state, ppid, pgrp, session, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session_id and fields[0] != "Z":
                pids.append(int(stat.parent.name))
    return pids


def child_pid(session_id: int, marker: str) -> int:
    for pid in session_pids(session_id):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if marker in cmdline:
                return pid
    raise LookupError(f"no process running {marker!r}")


class Demo:
    """``demo/run.py`` in a session of its own, its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115  (closed in cleanup())
        self.process = subprocess.Popen(
            [sys.executable, str(RUN), *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None:
                pytest.fail(f"run.py exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} not printed within {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run.py still running after {timeout:.0f} s:\n{self.output()[-6000:]}")

    def leftovers(self) -> list[int]:
        return session_pids(self.process.pid)

    def cleanup(self) -> None:
        """Never leave a server or worker behind, even when the test failed."""
        _reap(self.process)
        self._out.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    started: list[Demo] = []

    def start(*args: str, **env: str) -> Demo:
        demo = Demo(list(args), demo_env(tmp_path / "demo", **env), tmp_path / "run.log")
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.cleanup()


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds child processes through /proc"
)


@pytest.mark.integration
def test_check_mode_runs_a_scheduled_task_end_to_end(launch: Callable[..., Demo]) -> None:
    demo = launch("--check", DEMO_CHECK_TIMEOUT="90")

    code = demo.wait(CHECK_TIMEOUT)

    output = demo.output()
    assert code == 0, output[-8000:]
    assert "Login:     admin / admin" in output
    assert "check: run recorded: Sales report (EMEA)" in output
    assert "check: every scheduled task has its django-celery-beat PeriodicTask" in output
    assert "check: the demo works end to end" in output


def demo_redis_url() -> str:
    """The test broker's Redis server, on a database of the demo's own (never db 0)."""
    url = os.environ.get("CELERY_BROKER_URL", "")
    if not url.startswith(("redis://", "rediss://")):
        message = "the Redis variant of the demo needs CELERY_BROKER_URL=redis://..."
        if services_required():
            pytest.fail(message)
        pytest.skip(message)
    return urlunsplit(urlsplit(url)._replace(path=f"/{DEMO_REDIS_DB}"))


@pytest.mark.integration
@pytest.mark.redis
def test_check_mode_with_redis_sends_native_priorities(
    launch: Callable[..., Demo], tmp_path: Path
) -> None:
    import redis

    url = demo_redis_url()
    redis.Redis.from_url(url).flushdb()  # messages left by an earlier run of this test
    demo = launch("--check", CELERY_BROKER_URL=url, DEMO_CHECK_TIMEOUT="90")

    code = demo.wait(CHECK_TIMEOUT)

    assert code == 0, demo.output()[-8000:]
    with contextlib.closing(sqlite3.connect(tmp_path / "demo" / "db.sqlite3")) as db:
        priorities = dict(
            db.execute(
                "SELECT s.name, p.priority FROM orchestrator_scheduledtask s "
                "JOIN django_celery_beat_periodictask p ON p.id = s.periodic_task_id"
            ).fetchall()
        )
    # Redis serves 0 first: orchestrator's 9 (most urgent) is sent as 0.
    assert priorities["ERP order sync"] == 0
    assert priorities["Search index rebuild"] == 7


@pytest.mark.integration
@needs_proc
def test_ctrl_c_stops_every_process_and_a_restart_keeps_data_and_password(
    launch: Callable[..., Demo], tmp_path: Path
) -> None:
    first = launch()
    first.wait_for_output("Press Ctrl-C to stop.")
    assert len(first.leftovers()) >= 4  # run.py, web, worker (and its pool), beat

    first.process.send_signal(signal.SIGINT)

    assert first.wait(40) == 0, first.output()[-6000:]
    assert "Demo stopped." in first.output()
    assert first.leftovers() == []
    assert "created scheduled task 'Sales report (EMEA)'" in first.output()
    first.cleanup()

    _change_admin_password(tmp_path / "demo")
    second = launch()
    second.wait_for_output("Press Ctrl-C to stop.")

    assert "examples already present (kept as they are)" in second.output()
    assert "Login:     admin / (the one you set)" in second.output()


@pytest.mark.integration
@needs_proc
def test_the_demo_keeps_running_when_its_output_is_closed(tmp_path: Path) -> None:
    env = demo_env(tmp_path / "demo")
    process = subprocess.Popen(
        [sys.executable, str(RUN)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _read_until(process, b"Press Ctrl-C to stop.", START_TIMEOUT)
        process.stdout.close()  # as when `make demo | head` or a closed terminal stops reading

        # The web server logs this request into the closed output: it must keep answering.
        for _ in range(2):
            with urllib.request.urlopen(f"http://127.0.0.1:{env['DEMO_PORT']}/admin/login/") as r:
                assert r.status == 200

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
        assert session_pids(process.pid) == []
    finally:
        _reap(process)


def _read_until(process: subprocess.Popen[bytes], marker: bytes, timeout: float) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([process.stdout], [], [], left)[0]:
            pytest.fail(f"{marker!r} not printed within {timeout:.0f} s:\n{seen.decode()}")
        chunk = os.read(process.stdout.fileno(), 65536)
        if not chunk:
            pytest.fail(f"run.py exited with {process.wait()}:\n{seen.decode()}")
        seen += chunk


def _reap(process: subprocess.Popen[bytes]) -> None:
    """Stop run.py and anything left in its session, whatever state the test left it in."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    for pid in session_pids(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _change_admin_password(demo_dir: Path) -> None:
    script = (
        "import django; django.setup();"
        "from django.contrib.auth.models import User;"
        "u = User.objects.get(username='admin'); u.set_password('changed'); u.save()"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        cwd=DEMO,
        env=demo_env(demo_dir, DJANGO_SETTINGS_MODULE="demo_project.settings"),
        check=True,
        timeout=60,
    )


@pytest.mark.integration
@needs_proc
def test_a_child_that_dies_stops_the_others_and_exits_non_zero(
    launch: Callable[..., Demo],
) -> None:
    demo = launch()
    demo.wait_for_output("Press Ctrl-C to stop.")

    os.kill(child_pid(demo.process.pid, "runserver"), signal.SIGKILL)

    assert demo.wait(40) == 1
    output = demo.output()
    assert "web exited with code -9; its last output:" in output
    assert "Demo stopped after an error." in output
    assert demo.leftovers() == []


@pytest.mark.integration
def test_a_busy_port_is_reported_before_anything_starts(
    launch: Callable[..., Demo],
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        demo = launch(DEMO_PORT=str(busy.getsockname()[1]))

        assert demo.wait(30) == 1
    assert "is in use" in demo.output()
    assert "Migrating" not in demo.output()


def _demo_settings(tmp_path: Path, **env: str) -> dict[str, object]:
    """Selected demo settings, read in a fresh interpreter (settings read the environment once)."""
    script = (
        "import json; from demo_project import settings as s;"
        "print(json.dumps({'db': s.DATABASES['default'], 'broker': s.CELERY_BROKER_URL,"
        "'options': s.CELERY_BROKER_TRANSPORT_OPTIONS, 'orchestrator': s.ORCHESTRATOR,"
        "'prefetch': s.CELERY_WORKER_PREFETCH_MULTIPLIER, 'acks_late': s.CELERY_TASK_ACKS_LATE,"
        "'scheduler': s.CELERY_BEAT_SCHEDULER, 'email': s.EMAIL_BACKEND}, default=str))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=DEMO,
        env=demo_env(tmp_path, **env),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(result.stdout)


def test_settings_default_to_sqlite_and_the_filesystem_broker_in_demo_dir(
    tmp_path: Path,
) -> None:
    values = _demo_settings(tmp_path, DEMO_PORT="8123")

    assert values["db"]["NAME"] == str(tmp_path / "db.sqlite3")
    assert values["broker"].startswith("filesystem://")
    queue = str(tmp_path / "broker" / "queue")
    assert values["options"]["data_folder_in"] == values["options"]["data_folder_out"] == queue
    assert (tmp_path / "broker" / "queue").is_dir()
    assert values["orchestrator"]["ALLOWED_TASK_MODULES"] == [
        "demo_jobs",
        "orchestrator.builtin_tasks",
    ]
    assert values["orchestrator"]["BASE_URL"] == "http://127.0.0.1:8123"
    assert values["prefetch"] == 1
    assert values["acks_late"] is True
    assert values["scheduler"] == "orchestrator.scheduler:Scheduler"
    assert values["email"] == "django.core.mail.backends.console.EmailBackend"


def test_settings_follow_database_url_and_celery_broker_url(tmp_path: Path) -> None:
    values = _demo_settings(
        tmp_path,
        DATABASE_URL="postgres://demo@db.example:5432/demo",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/5",
    )

    assert values["db"]["ENGINE"] == "django.db.backends.postgresql"
    assert values["db"]["NAME"] == "demo"
    assert values["broker"] == "redis://127.0.0.1:6379/5"
    assert values["options"]["priority_steps"] == list(range(10))
    assert values["options"]["queue_order_strategy"] == "priority"
    assert not (tmp_path / "broker").exists()


@pytest.fixture
def demo_jobs(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(DEMO))
    import demo_jobs

    return demo_jobs


def test_sales_report_succeeds_with_a_small_summary(demo_jobs) -> None:
    report = demo_jobs.generate_sales_report(region="APAC", days=3)

    assert report["region"] == "APAC"
    assert report["orders"] > 0
    assert report == demo_jobs.generate_sales_report(region="APAC", days=3)


def test_inventory_sync_fails_when_the_draw_is_under_the_failure_rate(
    demo_jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_jobs.random, "random", lambda: 0.29)
    with pytest.raises(TimeoutError, match="berlin-1"):
        demo_jobs.sync_inventory(failure_rate=0.3)

    monkeypatch.setattr(demo_jobs.random, "random", lambda: 0.31)
    assert demo_jobs.sync_inventory(failure_rate=0.3)["warehouse"] == "berlin-1"


def test_erp_sync_always_fails_with_a_connection_error(demo_jobs) -> None:
    with pytest.raises(ConnectionError, match="connection refused"):
        demo_jobs.sync_erp_orders()


def test_search_index_rebuild_takes_the_time_it_is_given(demo_jobs) -> None:
    assert demo_jobs.rebuild_search_index(seconds=0)["seconds"] == 0
