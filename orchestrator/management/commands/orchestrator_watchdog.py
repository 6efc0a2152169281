"""``python manage.py orchestrator_watchdog [--loop]``: run watchdog passes outside the workers."""

from __future__ import annotations

import socket
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from orchestrator import watchdog
from orchestrator.conf import conf


class Command(BaseCommand):
    help = (
        "Run one watchdog pass: record missed runs, alert a stale scheduler. With --loop, "
        "keep running one every ORCHESTRATOR['WATCHDOG_INTERVAL'] seconds (when it is this "
        "process's turn: workers running the watchdog take turns with it)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", action="store_true", help="Keep running passes.")

    def handle(self, *args: Any, loop: bool = False, **options: Any) -> None:
        holder = f"orchestrator_watchdog@{socket.gethostname()}"
        if not loop:
            self.stdout.write(str(watchdog.run_pass(holder, force=True)))
            return
        while True:
            close_old_connections()
            report = watchdog.run_pass(holder)
            if report.ran:
                self.stdout.write(str(report))
            time.sleep(conf.WATCHDOG_INTERVAL)
