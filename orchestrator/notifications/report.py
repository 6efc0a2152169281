"""The failure report: per task over a period, runs, failures, rate and last error."""

from __future__ import annotations

import datetime as dt
import re

from django.db.models import Count, OuterRef, Q, Subquery
from django.utils import timezone

from orchestrator.models import ScheduledTask, TaskRun
from orchestrator.notifications.events import Report, ReportRow, task_url, truncate
from orchestrator.redaction import redact_run_text

_PERIOD = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
FINAL = TaskRun.OUTCOME_STATUSES
FAILED = TaskRun.FINAL_FAILURE_STATUSES
ERRORED = (*FAILED, TaskRun.Status.RETRIED)
REPORT_ERROR_CHARS = 300


def parse_period(value: str) -> dt.timedelta:
    """``"24h"`` -> 24 hours; units s, m, h, d, w. Raise ValueError for anything else."""
    match = _PERIOD.match(value or "")
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"{value!r} is not a period; use a number and a unit, such as 30m, 24h, 7d or 2w."
        )
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def build_report(period: str = "24h", now: dt.datetime | None = None) -> Report:
    """Tasks with a failed run or a failed attempt in the last ``period``, worst first.

    ``runs`` counts finished runs (succeeded or finally failed), ``failures`` the final
    failures, ``retries`` the failed attempts that were retried.
    """
    until = now or timezone.now()
    since = until - parse_period(period)
    window = Q(runs__started_at__gte=since, runs__started_at__lt=until)
    errors = TaskRun.objects.filter(
        scheduled_task=OuterRef("pk"),
        started_at__gte=since,
        started_at__lt=until,
        status__in=ERRORED,
    ).order_by("-started_at", "-id")
    tasks = (
        ScheduledTask.objects.annotate(
            n_runs=Count("runs", filter=window & Q(runs__status__in=FINAL)),
            n_failures=Count("runs", filter=window & Q(runs__status__in=FAILED)),
            n_retries=Count("runs", filter=window & Q(runs__status=TaskRun.Status.RETRIED)),
            last_error_type=Subquery(errors.values("error_type")[:1]),
            last_error_message=Subquery(errors.values("error_message")[:1]),
            last_error_at=Subquery(errors.values("started_at")[:1]),
        )
        .filter(Q(n_failures__gt=0) | Q(n_retries__gt=0))
        .values(
            "pk",
            "name",
            "n_runs",
            "n_failures",
            "n_retries",
            "last_error_type",
            "last_error_message",
            "last_error_at",
            "kwargs",
        )
    )
    rows = []
    for t in tasks:
        error = t["last_error_type"] or ""
        if t["last_error_message"]:
            error = f"{error}: {t['last_error_message']}" if error else t["last_error_message"]
        rows.append(
            ReportRow(
                task_name=t["name"],
                task_id=t["pk"],
                runs=t["n_runs"],
                failures=t["n_failures"],
                retries=t["n_retries"],
                # Stored errors are redacted; this holds for rows stored before that too.
                last_error=truncate(redact_run_text(error, t["kwargs"]), REPORT_ERROR_CHARS),
                last_error_at=t["last_error_at"],
                url=task_url(t["pk"]),
            )
        )
    rows.sort(key=lambda r: (-r.failures, -r.failure_rate, -r.retries, r.task_name))
    totals = TaskRun.objects.filter(
        started_at__gte=since, started_at__lt=until, status__in=FINAL
    ).aggregate(runs=Count("id"), failures=Count("id", filter=Q(status__in=FAILED)))
    return Report(
        since=since,
        until=until,
        period=period.strip(),
        rows=tuple(rows),
        total_runs=totals["runs"],
        total_failures=totals["failures"],
    )
