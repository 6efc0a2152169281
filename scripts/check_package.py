"""Follow the README's "In your project" section with a built wheel, end to end.

    python scripts/check_package.py --wheel dist/django_orchestrator-X-py3-none-any.whl \
        --workdir /tmp/x --database-url postgres://postgres@127.0.0.1:5432/orch_package \
        --broker-url redis://127.0.0.1:6379/7

In a fresh virtualenv: install the wheel (not this source tree) as the README's ``pip install``
line says, ``django-admin startproject myproject``, write every file block of the section (the
settings block is appended to the generated settings, the others written as they are), run the
section's shell commands (``migrate``, a worker and beat), then run the section's Python snippet
in the project and wait until beat has sent the scheduled task, the worker has run it and a
succeeded ``TaskRun`` is recorded. The only departures from the letter, printed as they are made:
the wheel file stands in for the package name, the database and broker addresses of this
machine are appended to the settings, the database driver is installed, and the snippet's cron
becomes every minute so the run comes within one. Exits non-zero, with the logs, on any failure:
each one is a README or packaging bug.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "### In your project"
PROJECT = "myproject"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
DRIVERS = {"postgres": "psycopg[binary]>=3.1", "mysql": "mysqlclient>=2.2"}


def say(message: str) -> None:
    print(f"check_package: {message}", flush=True)


def section_blocks(readme: Path) -> list[tuple[str, str]]:
    """The fenced blocks of the README's "In your project" section: (language, text)."""
    text = readme.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    return BLOCK.findall(text[start : end if end != -1 else None])


def run(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    shown = [arg.splitlines()[0] + " ..." if "\n" in arg else arg for arg in args]
    say("$ " + shlex.join(shown))
    subprocess.run(args, cwd=cwd, env=env, check=True)


class Project:
    def __init__(self, workdir: Path, wheel: Path, database_url: str, broker_url: str) -> None:
        self.workdir = workdir
        self.wheel = wheel
        self.database_url = database_url
        self.broker_url = broker_url
        self.venv = workdir / "venv"
        self.bin = self.venv / "bin"
        self.dir = workdir / PROJECT  # where manage.py is
        self.logs = workdir / "logs"
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV"}
        }
        self.env["PATH"] = f"{self.bin}{os.pathsep}{self.env.get('PATH', '')}"

    def create(self) -> None:
        say(f"fresh virtualenv in {self.venv}")
        venv.create(self.venv, with_pip=True, clear=True)
        self.logs.mkdir(parents=True, exist_ok=True)

    def shell_line(self, line: str) -> None:
        args = shlex.split(line.split("  #")[0])
        if args[:2] == ["pip", "install"]:
            # The package as users get it, from the wheel: "django-orchestrator[redis]".
            name, _, extras = args[2].partition("[")
            assert name == "django-orchestrator", f"the README installs {args[2]!r}"
            spec = f"{self.wheel}[{extras}" if extras else str(self.wheel)
            run(
                [str(self.bin / "python"), "-m", "pip", "install", "--quiet", spec],
                self.dir.parent,
                self.env,
            )
        elif args[:1] == ["celery"]:
            self.start(args)
        else:
            run(
                [str(self.bin / args[0]), *args[1:]]
                if args[0] != "python"
                else [str(self.bin / "python"), *args[1:]],
                self.dir,
                self.env,
            )

    def start(self, args: list[str]) -> None:
        log = self.logs / f"{args[3] if len(args) > 3 else 'celery'}.log"
        say("$ " + shlex.join(args) + f"  (in the background, log {log})")
        out = open(log, "wb")  # noqa: SIM115  (closed with the process)
        process = subprocess.Popen(
            [str(self.bin / args[0]), *args[1:]],
            cwd=self.dir,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append((process, log))

    def stop(self) -> None:
        for process, _ in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def dump_logs(self) -> None:
        for _, log in self.processes:
            print(f"----- {log.name} (last 60 lines)", file=sys.stderr)
            lines = log.read_text(errors="replace").splitlines()
            print("\n".join(lines[-60:]), file=sys.stderr)


SNIPPET_PRELUDE = """
import django
django.setup()
"""

WAIT_FOR_RUN = """
import sys, time
from orchestrator.models import ScheduledTask, TaskRun

task.cron = "* * * * *"  # every minute: a run within one, not on the next weekday at 06:30
task.full_clean()
task.save()
deadline = time.monotonic() + {timeout}
while time.monotonic() < deadline:
    run = TaskRun.objects.filter(scheduled_task=task).order_by("-id").first()
    if run is not None and run.status in ("succeeded", "failed", "lost"):
        break
    time.sleep(1)
else:
    sys.exit(f"no finished run of {{task.name!r}} within {timeout} s")
print(f"run {{run.pk}}: {{run.status}}, trigger {{run.trigger}}, result {{run.result!r}}")
assert run.status == "succeeded", (run.status, run.error_type, run.error_message)
assert run.trigger == "schedule", run.trigger
assert run.result == "invoices of the last 7 days sent", run.result
"""


def check(args: argparse.Namespace) -> None:
    blocks = section_blocks(ROOT / "README.md")
    project = Project(
        args.workdir.resolve(), args.wheel.resolve(), args.database_url, args.broker_url
    )
    project.create()
    shell = [text for language, text in blocks if language == "sh"]
    files = [text for language, text in blocks if language == "python" and text.startswith("# ")]
    snippets = [
        text for language, text in blocks if language == "python" and not text.startswith("# ")
    ]
    assert len(shell) == 2 and len(snippets) == 1, "the section's shape changed: update this script"

    for line in shell[0].splitlines():  # pip install
        project.shell_line(line)
    scheme = args.database_url.split(":", 1)[0]
    driver = DRIVERS["mysql" if scheme.startswith("mysql") else "postgres"]
    say(f"the database driver, as the project would have it: {driver}")
    run(
        [
            str(project.bin / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            driver,
            "dj-database-url>=2.1",
        ],
        project.workdir,
        project.env,
    )
    run([str(project.bin / "django-admin"), "startproject", PROJECT], project.workdir, project.env)

    for text in files:
        path = text.splitlines()[0][2:].strip()
        target = project.dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith("settings.py"):
            say(f"append to {path}")
            with target.open("a") as settings:
                settings.write("\n" + text)
                settings.write(
                    "\n# check_package.py: this machine's services instead of the examples'\n"
                    "import dj_database_url\n\n"
                    f"DATABASES = {{'default': dj_database_url.parse({args.database_url!r})}}\n"
                    f"CELERY_BROKER_URL = {args.broker_url!r}\n"
                )
        else:
            say(f"write {path}")
            target.write_text(text)

    try:
        for line in shell[1].splitlines():  # migrate, worker, beat
            project.shell_line(line)
        time.sleep(1)
        for process, log in project.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{log.name}: exited with {process.returncode}")
        say("the README's Python snippet, then wait for beat, the worker and the TaskRun")
        code = SNIPPET_PRELUDE + snippets[0] + WAIT_FOR_RUN.format(timeout=args.timeout)
        env = {**project.env, "DJANGO_SETTINGS_MODULE": f"{PROJECT}.settings"}
        run([str(project.bin / "python"), "-c", code], project.dir, env)
    except BaseException:
        project.stop()
        project.dump_logs()
        raise
    project.stop()
    say("the README's steps work with the built wheel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--timeout", type=int, default=150, help="seconds to wait for the run")
    check(parser.parse_args())


if __name__ == "__main__":
    main()
