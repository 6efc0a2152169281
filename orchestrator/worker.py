"""The Celery worker side of the watchdog: a bootstep that runs a pass on a timer.

Every worker process group gets the step (``ORCHESTRATOR["WATCHDOG_IN_WORKERS"]``, on by
default); each asks for the fleet-wide turn every ``WATCHDOG_INTERVAL`` seconds, and one of
them does the pass (:func:`orchestrator.watchdog.run_pass`). The pass runs in a thread of its
own, so the worker's event loop keeps serving messages meanwhile.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps
from celery.signals import celeryd_init
from django.db import close_old_connections

from orchestrator import watchdog
from orchestrator.conf import conf

logger = logging.getLogger(__name__)


class WatchdogStep(bootsteps.StartStopStep):
    """Run a watchdog pass every ``ORCHESTRATOR["WATCHDOG_INTERVAL"]`` seconds, when it is this
    worker's turn."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.timer_ref: Any = None
        self.hostname = str(getattr(worker, "hostname", "") or "worker")
        self._running = threading.Lock()

    def start(self, worker: Any) -> None:
        self.timer_ref = worker.timer.call_repeatedly(conf.WATCHDOG_INTERVAL, self.tick)

    def stop(self, worker: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    def tick(self) -> None:
        # A pass still going (a slow database) is not doubled by the next tick.
        if not self._running.acquire(blocking=False):
            return
        threading.Thread(target=self._pass, name="orchestrator-watchdog", daemon=True).start()

    def _pass(self) -> None:
        try:
            close_old_connections()
            report = watchdog.run_pass(self.hostname)
            if report.ran:
                logger.info("orchestrator watchdog: %s", report)
        except Exception:  # a timer callback must never take the worker down
            logger.exception("orchestrator watchdog pass failed")
        finally:
            close_old_connections()
            self._running.release()


def install(app: Any) -> None:
    """Add the watchdog step to ``app``'s workers (idempotent)."""
    steps = app.steps["worker"]
    if WatchdogStep not in steps:
        steps.add(WatchdogStep)


@celeryd_init.connect(weak=False, dispatch_uid="orchestrator.watchdog.install")
def _install_in_workers(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    # Sent before the worker builds its blueprint: the step joins it.
    if instance is not None and conf.WATCHDOG_IN_WORKERS:
        install(instance.app)
