"""``python manage.py orchestrator_prune [--dry-run]``: delete the history past its retention."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestrator import retention


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = (
        "Delete task runs older than ORCHESTRATOR['RUN_RETENTION_DAYS'] and notification "
        "deliveries older than ORCHESTRATOR['DELIVERY_RETENTION_DAYS'] (with the alert state "
        "that no longer matters), in short batches; each task's latest final run, runs still "
        "queued, running or awaiting a retry, and runs a kept delivery points to are kept. "
        "The maintenance task does the same every minute, for a few seconds at a time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )
        parser.add_argument(
            "--batch-size",
            type=_positive_int,
            default=retention.DEFAULT_BATCH_SIZE,
            help=f"Rows per DELETE statement (default {retention.DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--budget",
            type=_positive_float,
            default=None,
            help="Stop after this many seconds (between batches); default: until done.",
        )

    def handle(
        self,
        *args: Any,
        dry_run: bool = False,
        batch_size: int = retention.DEFAULT_BATCH_SIZE,
        budget: float | None = None,
        **options: Any,
    ) -> None:
        try:
            report = retention.prune(dry_run=dry_run, batch_size=batch_size, budget=budget)
        except retention.RetentionSettingError as err:
            raise CommandError(str(err)) from None
        for line in report.lines():
            self.stdout.write(line)
