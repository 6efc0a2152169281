#!/usr/bin/env python
"""Run the orchestrator demo: one command, web admin + Celery worker + beat.

    python demo/run.py           # set up, start everything, print the URLs; Ctrl-C stops it all
    python demo/run.py --check   # the same, then wait for one real run end to end, and stop

Steps: migrate the database, create the admin login and the example tasks (only what is
missing: an operator's edits are kept), then start ``runserver``, ``celery worker`` and
``celery beat`` as child processes, each in its own process group, with their output prefixed
here and kept in ``$DEMO_DIR/logs/``. SIGINT, SIGTERM or SIGHUP stops every child and exits 0;
a child that dies stops the others and exits 1 with the end of its output.

Environment: ``DEMO_DIR`` (default ``.demo/`` at the repository root), ``DEMO_PORT`` (8000),
``DATABASE_URL`` (SQLite in DEMO_DIR by default), ``CELERY_BROKER_URL`` (kombu's filesystem
transport in DEMO_DIR by default), ``DEMO_CHECK_TIMEOUT`` (seconds, for --check).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

DEMO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = DEMO_ROOT.parent

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"
# How long children get to finish their current work after SIGTERM (a warm Celery shutdown
# waits for running jobs) before their process groups are killed.
STOP_GRACE_SECONDS = 20.0
TAIL_LINES = 60

# The example definitions: (name, import path, category, description).
DEFINITIONS: list[tuple[str, str, str, str]] = [
    (
        "Sales report",
        "demo_jobs.generate_sales_report",
        "reporting",
        "Summarises orders of a region; always succeeds.",
    ),
    (
        "Inventory sync",
        "demo_jobs.sync_inventory",
        "integrations",
        "Pulls stock levels from a warehouse; times out about 30% of the time.",
    ),
    (
        "ERP order sync",
        "demo_jobs.sync_erp_orders",
        "integrations",
        "Pushes orders to an ERP that is down; always fails.",
    ),
    (
        "Search index rebuild",
        "demo_jobs.rebuild_search_index",
        "maintenance",
        "Slow: takes several seconds.",
    ),
    (
        "Failure report",
        "orchestrator.builtin_tasks.failure_report",
        "operations",
        "Ships with orchestrator: sends the failures of a period to the channels subscribed "
        "to the report event.",
    ),
]

# The example schedules. Delays are short so retries happen within a minute of a failure.
SCHEDULED_TASKS: list[dict[str, Any]] = [
    {
        "name": "Sales report (EMEA)",
        "definition": "Sales report",
        "cron": "* * * * *",
        "kwargs": {"region": "EMEA", "days": 7},
        "max_retries": 2,
        "retry_backoff": "fixed",
        "retry_delay": 10,
        "retry_jitter": False,
        "priority": 5,
        "description": "Every minute. Used by `run.py --check` to prove a run end to end.",
    },
    {
        "name": "Inventory sync (Berlin)",
        "definition": "Inventory sync",
        "cron": "* * * * *",
        "kwargs": {"warehouse": "berlin-1", "failure_rate": 0.3},
        "max_retries": 3,
        "retry_backoff": "fixed",
        "retry_delay": 10,
        "retry_jitter": False,
        "priority": 6,
        "description": "Every minute; a failed attempt is retried 10 s later, up to 3 times.",
    },
    {
        "name": "ERP order sync",
        "definition": "ERP order sync",
        "cron": "*/2 * * * *",
        "kwargs": {},
        "max_retries": 3,
        "retry_backoff": "exponential",
        "retry_delay": 5,
        "retry_backoff_max": 30,
        "retry_jitter": True,
        "priority": 9,
        "description": "Every 2 minutes; retries after about 5, 10 and 20 s "
        "(exponential, jittered), then fails for good.",
    },
    {
        "name": "Search index rebuild",
        "definition": "Search index rebuild",
        "cron": "*/5 * * * *",
        "kwargs": {"seconds": 8},
        "max_retries": 1,
        "retry_backoff": "linear",
        "retry_delay": 15,
        "retry_jitter": False,
        "priority": 2,
        "time_limit": 60,
        "expires": 240,
        "description": "Every 5 minutes, low priority, stopped after 60 s.",
    },
    {
        "name": "Daily failure report",
        "definition": "Failure report",
        "cron": "0 7 * * *",
        "kwargs": {"since": "24h"},
        "max_retries": 2,
        "retry_backoff": "linear",
        "retry_delay": 60,
        "retry_jitter": False,
        "priority": 1,
        "description": "Every morning at 7:00 UTC; Run now sends it at once (to the console).",
    },
]

CHECK_TASK = "Sales report (EMEA)"


class ChildDied(Exception):
    """A child process exited while the demo was running."""


class StopRequested(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived."""


class DemoFailed(Exception):
    """Something the demo waits for did not happen; the message says what."""


class Child:
    """A child process in its own process group, its output prefixed, logged and tailed."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_dir: Path, echo: Echo
    ) -> None:
        self.name = name
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._log = open(log_dir / f"{name}.log", "a", encoding="utf-8")  # noqa: SIM115
        # A process group of its own: the terminal's Ctrl-C reaches only run.py, which stops
        # the children in order, and killpg() also reaches a worker's pool processes.
        self.process = subprocess.Popen(
            args,
            cwd=DEMO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        self._reader = threading.Thread(target=self._pump, args=(echo,), daemon=True)
        self._reader.start()

    def _pump(self, echo: Echo) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            self.tail.append(line)
            self._log.write(line + "\n")
            self._log.flush()
            echo(f"{self.name:>6} | {line}")

    def returncode(self) -> int | None:
        return self.process.poll()

    def terminate(self) -> None:
        """Ask the process itself to stop; a Celery worker then shuts down its own pool."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def drain(self) -> None:
        """Wait until the output of an exited process has been read."""
        self._reader.join(timeout=2)

    def close(self) -> None:
        self.drain()
        self._log.close()


class Echo:
    """Print lines from several threads without interleaving them.

    Once the output is gone (a closed terminal, ``make demo | head``), lines are dropped:
    raising would stop the threads that drain the children's pipes, and the children would
    block on a full pipe. Their logs in DEMO_DIR still get everything.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, line: str) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                self._closed = True
                # Otherwise the interpreter's final flush reports the broken pipe at exit.
                with contextlib.suppress(OSError, ValueError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())


class Supervisor:
    """Starts the children, watches them, and stops them all on a signal or a death."""

    def __init__(self, env: dict[str, str], log_dir: Path, echo: Echo) -> None:
        self.env = env
        self.log_dir = log_dir
        self.echo = echo
        self.children: list[Child] = []
        self._stop = threading.Event()
        self._signals = 0

    def install_signal_handlers(self) -> None:
        # SIGHUP: the terminal running the demo was closed.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals > 1:
            # A second Ctrl-C while stopping: the user does not want to wait for running jobs.
            for child in self.children:
                child.signal_group(signal.SIGKILL)
        self._stop.set()

    def start(self, name: str, args: list[str], **extra_env: str) -> Child:
        child = Child(name, args, {**self.env, **extra_env}, self.log_dir, self.echo)
        self.children.append(child)
        return child

    def watch(
        self,
        until: Callable[[], bool] | None = None,
        timeout: float | None = None,
        interval: float = 0.5,
    ) -> bool:
        """Wait until ``until()`` is true (True), or the timeout passes (False).

        Raise StopRequested on a signal, ChildDied when a child exits.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._stop.is_set():
                raise StopRequested
            for child in self.children:
                code = child.returncode()
                if code is not None:
                    raise ChildDied(f"{child.name} exited with code {code}")
            if until is not None and until():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._stop.wait(interval)

    def stop_all(self) -> None:
        alive = [child for child in self.children if child.returncode() is None]
        if alive:
            self.echo(f"Stopping {', '.join(child.name for child in alive)}...")
        for child in alive:
            # Not the whole group: SIGTERM to a worker's pool processes would kill running jobs
            # instead of the warm shutdown that lets them finish.
            child.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and any(c.returncode() is None for c in alive):
            time.sleep(0.2)
        for child in self.children:
            # Also reaches leftovers of a group whose leader already exited.
            child.signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)
            child.close()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As runserver does: connections of a server that just stopped (TIME_WAIT) do not
        # keep the port, a listening socket still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_status(url: str) -> int | None:
    """The status of a GET without following redirects; None when nothing answers."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return None


def setup_django(demo_dir: Path, port: int) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "demo_project.settings"
    os.environ["DEMO_DIR"] = str(demo_dir)
    os.environ["DEMO_PORT"] = str(port)
    # demo/ for demo_project and demo_jobs; the repository root so this checkout's orchestrator
    # is used even when it is not installed.
    for path in (str(REPO_ROOT), str(DEMO_ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import django

    django.setup()


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def ensure_admin() -> str:
    """Create the admin login if missing; return the password to print."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    user = user_model.objects.filter(username=ADMIN_USERNAME).first()
    if user is None:
        user_model.objects.create_superuser(ADMIN_USERNAME, "admin@example.com", ADMIN_PASSWORD)
        return ADMIN_PASSWORD
    # Never reset a password someone changed; just do not print a wrong one.
    return ADMIN_PASSWORD if user.check_password(ADMIN_PASSWORD) else "(the one you set)"


def seed_examples(echo: Echo) -> None:
    """Create the example definitions, schedules and alert channel that are missing.

    Each row goes through ``full_clean()`` like an admin form, and saving a ScheduledTask syncs
    it to django-celery-beat; existing rows are left as the operator edited them.
    """
    from orchestrator.models import Event, NotificationChannel, ScheduledTask, TaskDefinition
    from orchestrator.policies.priority import supports_priority
    from orchestrator.routing import broker_transport

    # The filesystem broker has no priorities (a system check warns when they are set there).
    use_priority = supports_priority(broker_transport())
    created: list[str] = []
    definitions: dict[str, TaskDefinition] = {}
    for name, import_path, category, description in DEFINITIONS:
        definition = TaskDefinition.objects.filter(name=name).first()
        if definition is None:
            definition = TaskDefinition(
                name=name, import_path=import_path, category=category, description=description
            )
            definition.full_clean()
            definition.save()
            created.append(f"definition {name!r}")
        definitions[name] = definition

    for spec in SCHEDULED_TASKS:
        fields = dict(spec)
        name = fields.pop("name")
        if ScheduledTask.objects.filter(name=name).exists():
            continue
        fields["task_definition"] = definitions[fields.pop("definition")]
        if not use_priority:
            fields["priority"] = None
        task = ScheduledTask(name=name, timezone="UTC", **fields)
        task.full_clean()
        task.save()
        created.append(f"scheduled task {name!r} ({task.cron})")

    if not NotificationChannel.objects.exists():
        # Alerts are emails printed by the worker (EMAIL_BACKEND is the console one).
        channel = NotificationChannel(
            name="Ops team (console email)",
            kind="email",
            target="ops@example.com",
            events=[Event.FAILURE, Event.RECOVERY, Event.REPORT],
            is_default=True,
        )
        channel.full_clean()
        channel.save()
        created.append(f"notification channel {channel.name!r}")

    for line in created:
        echo(f"  created {line}")
    if not created:
        echo("  examples already present (kept as they are)")


def children_env(demo_dir: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "demo_project.settings",
            "DEMO_DIR": str(demo_dir),
            "DEMO_PORT": str(port),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(DEMO_ROOT), str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
            ),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_children(supervisor: Supervisor, port: int) -> None:
    celery = [sys.executable, "-m", "celery", "-A", "demo_project.celery"]
    supervisor.start(
        "web", [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    )
    supervisor.start(
        "worker",
        [
            *celery,
            "worker",
            "--loglevel=INFO",
            "--concurrency=2",
            "--hostname=demo@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        DEMO_DEBUG="0",
    )
    supervisor.start(
        "beat",
        [
            *celery,
            "beat",
            "--loglevel=INFO",
            "--scheduler=orchestrator.scheduler:Scheduler",
            "--max-interval=5",
        ],
        DEMO_DEBUG="0",
    )


def describe_backends(demo_dir: Path) -> tuple[str, str]:
    from django.conf import settings

    db = settings.DATABASES["default"]
    database = (
        f"SQLite {db['NAME']}"
        if db["ENGINE"].endswith("sqlite3")
        else f"{db['ENGINE'].rsplit('.', 1)[-1]} {db.get('HOST') or 'localhost'}/{db['NAME']}"
    )
    broker_url = str(settings.CELERY_BROKER_URL)
    broker = (
        f"filesystem {demo_dir / 'broker'}"
        if broker_url.startswith("filesystem")
        else broker_url.rsplit("@", 1)[-1]  # never print a password
    )
    return database, broker


def run_check(supervisor: Supervisor, base_url: str, timeout: float) -> None:
    """Prove the demo works end to end: pages answer, beat is synced, a run is recorded.

    Raise DemoFailed with what was missing.
    """
    from django.db import close_old_connections

    from orchestrator.models import ScheduledTask, TaskRun

    echo = supervisor.echo
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        return max(deadline - time.monotonic(), 0.0)

    status = http_status(base_url + "/")
    # The dashboard is staff-only: an anonymous visit is sent to the login page.
    if status != 302:
        raise DemoFailed(
            f"the dashboard at {base_url}/ answered {status}, not a redirect to log in"
        )
    echo("check: the dashboard answers (302 to the login page)")

    task = ScheduledTask.objects.get(name=CHECK_TASK)
    started = TaskRun.objects.order_by("-id").values_list("id", flat=True).first() or 0
    task.run_now()
    echo(f"check: sent {CHECK_TASK!r} with Run now; waiting for its run")
    runs = TaskRun.objects.filter(
        id__gt=started,
        scheduled_task=task,
        trigger=TaskRun.Trigger.MANUAL,
        status=TaskRun.Status.SUCCEEDED,
    )

    def run_recorded() -> bool:
        close_old_connections()
        return runs.exists()

    if not supervisor.watch(run_recorded, timeout=remaining(), interval=1.0):
        raise DemoFailed(
            f"the manual run was not recorded as succeeded within {timeout:.0f} s "
            "(see the worker output above)"
        )
    run = runs.order_by("-id").first()
    assert run is not None
    echo(f"check: run recorded: {run.scheduled_task} attempt {run.attempt}: {run.status}")

    def beat_synced() -> bool:
        close_old_connections()
        return not ScheduledTask.objects.filter(periodic_task__isnull=True).exists()

    if not supervisor.watch(beat_synced, timeout=remaining(), interval=1.0):
        missing = ScheduledTask.objects.filter(periodic_task__isnull=True)
        raise DemoFailed(
            "beat_sync did not create a PeriodicTask for: "
            + ", ".join(task.name for task in missing)
        )
    echo("check: every scheduled task has its django-celery-beat PeriodicTask")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        default=os.environ.get("DEMO_CHECK", "") not in ("", "0"),
        help="start everything, wait for one run end to end, then stop (exit 0 on success)",
    )
    args = parser.parse_args(argv)

    echo = Echo(sys.stdout)
    demo_dir = Path(os.environ.get("DEMO_DIR") or REPO_ROOT / ".demo").resolve()
    port = int(os.environ.get("DEMO_PORT") or 8000)
    check_timeout = float(os.environ.get("DEMO_CHECK_TIMEOUT") or 75)
    base_url = f"http://127.0.0.1:{port}"
    if not port_is_free(port):
        echo(f"Port {port} is in use: stop what runs there or set DEMO_PORT to another port.")
        return 1

    log_dir = demo_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        setup_django(demo_dir, port)
        database, broker = describe_backends(demo_dir)
        echo(f"Database: {database}")
        echo(f"Broker:   {broker}")
        echo("Migrating...")
        migrate()
        password = ensure_admin()
        echo("Example tasks:")
        seed_examples(echo)
    except KeyboardInterrupt:
        echo("Interrupted before anything was started.")
        return 0

    from django.db import connections

    # The children open their own connections; ours would only hold SQLite file handles.
    connections.close_all()

    supervisor = Supervisor(children_env(demo_dir, port), log_dir, echo)
    supervisor.install_signal_handlers()
    code = 0
    try:
        start_children(supervisor, port)
        if not supervisor.watch(lambda: http_status(base_url + "/admin/login/") == 200, timeout=60):
            raise DemoFailed(f"the web server did not answer at {base_url} within 60 s")
        echo("")
        echo("orchestrator demo is running")
        echo(f"  Dashboard: {base_url}/")
        echo(f"  Admin:     {base_url}/admin/")
        echo(f"  Login:     {ADMIN_USERNAME} / {password}")
        echo(f"  Logs:      {log_dir}")
        echo("Press Ctrl-C to stop.")
        echo("")
        if args.check:
            run_check(supervisor, base_url, check_timeout)
            echo("check: the demo works end to end")
        else:
            supervisor.watch()
    except StopRequested:
        echo("Stop requested.")
    except ChildDied as err:
        code = 1
        dead = next(c for c in supervisor.children if c.returncode() is not None)
        dead.drain()
        echo(f"{err}; its last output:")
        for line in dead.tail:
            echo(f"  {line}")
    except DemoFailed as err:
        code = 1
        echo(f"Failed: {err}")
    finally:
        supervisor.stop_all()
    echo("Demo stopped." if code == 0 else "Demo stopped after an error.")
    return code


if __name__ == "__main__":
    sys.exit(main())
