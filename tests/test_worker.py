"""The watchdog's bootstep: added to the workers, one pass per tick, never two at once."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any
from unittest import mock

from celery import Celery

from orchestrator import worker


def test_install_adds_the_step_once() -> None:
    app = Celery("install-test")
    worker.install(app)
    worker.install(app)
    assert list(app.steps["worker"]).count(worker.WatchdogStep) == 1


def test_the_worker_init_signal_installs_it_unless_switched_off(settings: Any) -> None:
    app = Celery("signal-test")
    worker._install_in_workers(instance=SimpleNamespace(app=app))
    assert worker.WatchdogStep in app.steps["worker"]
    other = Celery("off-test")
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "WATCHDOG_IN_WORKERS": False}
    worker._install_in_workers(instance=SimpleNamespace(app=other))
    assert worker.WatchdogStep not in other.steps["worker"]


def test_a_tick_runs_a_pass_in_a_thread_and_skips_while_one_is_running() -> None:
    step = worker.WatchdogStep(SimpleNamespace(hostname="w1@host"))
    release = threading.Event()
    calls: list[str] = []

    def slow_pass(holder: str) -> SimpleNamespace:
        calls.append(holder)
        release.wait(5)
        return SimpleNamespace(ran=True)

    with (
        mock.patch("orchestrator.watchdog.run_pass", side_effect=slow_pass),
        mock.patch("orchestrator.worker.close_old_connections"),
    ):
        step.tick()
        step.tick()  # the first pass is still going
        release.set()
        for thread in threading.enumerate():
            if thread.name == "orchestrator-watchdog":
                thread.join(5)
    assert calls == ["w1@host"]
