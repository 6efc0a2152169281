"""``manage.py orchestrator_report``: send the failure report now."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_email

from orchestrator.notifications.delivery import report_channels, send_report
from orchestrator.notifications.report import build_report, parse_period


class Command(BaseCommand):
    help = (
        "Send the failure report (runs, failures, failure rate, last error per task) to the "
        'channels subscribed to "report" and to --to addresses. Nothing is sent when nothing '
        "failed, unless --always."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since", default="24h", help="Period to cover, such as 30m, 24h, 7d (default 24h)."
        )
        parser.add_argument(
            "--to",
            nargs="+",
            default=[],
            metavar="EMAIL",
            help="Email the report to these addresses (in addition to the report channels).",
        )
        parser.add_argument(
            "--always", action="store_true", help="Send the report even when nothing failed."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            parse_period(options["since"])
        except ValueError as err:
            raise CommandError(str(err)) from None
        for address in options["to"]:
            try:
                validate_email(address)
            except ValidationError:
                raise CommandError(f"--to: {address!r} is not an email address.") from None
        if not options["to"] and not report_channels():
            raise CommandError(
                'No destination: subscribe a notification channel to the "report" event, '
                "or pass --to addresses."
            )
        report = build_report(options["since"])
        self.stdout.write(
            f"{len(report.rows)} failing task(s) since {report.since:%Y-%m-%d %H:%M %Z}."
        )
        if not report.has_failures and not options["always"]:
            self.stdout.write("Nothing failed: no report sent (use --always to send it anyway).")
            return
        failed = False
        for outcome in send_report(report, to=options["to"]):
            if outcome.status == "sent":
                self.stdout.write(self.style.SUCCESS(f"Sent to {outcome.destination}."))
            else:
                failed = True
                self.stderr.write(f"Not sent to {outcome.destination}: {outcome.error}")
        if failed:
            raise CommandError("The report could not be delivered everywhere.")
