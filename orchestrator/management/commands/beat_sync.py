from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from orchestrator.beat_sync import beat_sync


class Command(BaseCommand):
    help = "Bring django-celery-beat's PeriodicTasks in line with orchestrator's ScheduledTasks."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Print what would change and write nothing.",
        )

    def handle(self, *args: Any, dry_run: bool = False, **options: Any) -> None:
        report = beat_sync(dry_run=dry_run)
        if dry_run:
            for line in report.plan:
                self.stdout.write(line)
            self.stdout.write(f"Dry run, nothing written: would have {report}.")
        else:
            self.stdout.write(self.style.SUCCESS(f"beat_sync: {report}."))
        for error in report.errors:
            self.stderr.write(f"Skipped {error}")
