"""``python manage.py orchestrator_rebuild_rollups [--task ID ...]``: count the history again."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from orchestrator import rollups


class Command(BaseCommand):
    help = (
        "Compute the per-task run aggregates (what the dashboard, the admin and /metrics read) "
        "again from the run history: after loading history with bulk SQL, or a repair. One "
        "INSERT ... SELECT ... GROUP BY in one transaction."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--task",
            type=int,
            action="append",
            dest="task_ids",
            metavar="ID",
            help="Only this scheduled task (repeat for several); default: every task.",
        )

    def handle(self, *args: Any, task_ids: list[int] | None = None, **options: Any) -> None:
        written = rollups.rebuild(task_ids)
        self.stdout.write(f"Rebuilt the run aggregates: {written} aggregate row(s) written.")
