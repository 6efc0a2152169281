"""What an alert or a report says: plain data, built from the database once, sent as JSON.

An :class:`Alert` is built in the dispatcher's process when a run ends and travels in the
Celery message to the delivery task, so the worker that sends it needs no further query to
word it. Task kwargs are never part of it: they may hold personal data or secrets.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any
from urllib.parse import urljoin

from django.db import models
from django.urls import NoReverseMatch, reverse

from orchestrator.conf import conf

# Error text quoted in an alert; the run page in the admin has the whole of it.
ALERT_ERROR_CHARS = 500
TEST_EVENT = "test"


class Event(models.TextChoices):
    """What a notification is about (``orchestrator.models.Event`` is this class)."""

    RETRY = "retry", "Retry scheduled"
    FAILURE = "failure", "Final failure"
    RECOVERY = "recovery", "Recovery"
    REPORT = "report", "Failure report"
    PAUSED = "paused", "Paused by the circuit breaker"
    MISSED = "missed", "Missed runs"
    SCHEDULER = "scheduler", "Scheduler stopped or back"


# What a delivery row can be about: the events, and the admin's test notification.
DELIVERY_EVENT_CHOICES = [*Event.choices, (TEST_EVENT, "Test notification")]

# The events a single run can cause an alert for (a report is about many runs, the scheduler's
# about none).
RUN_EVENTS = (Event.RETRY, Event.FAILURE, Event.RECOVERY, Event.PAUSED, Event.MISSED)
# Events whose alert is about the task (or the scheduler) rather than one attempt of it.
TASK_EVENTS = (Event.PAUSED, Event.MISSED, Event.SCHEDULER)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _from_iso(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, marked with an ellipsis when cut."""
    text = text or ""
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)].rstrip() + "…"


@dataclass(frozen=True)
class Alert:
    """One event of one task run: a retry, a final failure, a recovery (or a test)."""

    event: str
    task_name: str
    task_id: int | None = None
    definition: str = ""
    attempt: int = 1
    max_attempts: int = 1
    duration: float | None = None
    queue: str = ""
    error_type: str = ""
    error_message: str = ""
    started_at: dt.datetime | None = None
    next_retry_at: dt.datetime | None = None
    run_id: int | None = None
    run_url: str = ""
    suppressed_count: int = 0
    consecutive_failures: int = 0
    note: str = ""  # why: "not retried: ValueError matches never_retry_on", a pause's reason
    # The last lines of the run's log (failures and retries): what the job said before it failed.
    log_tail: str = ""

    def with_counts(self, suppressed_count: int, consecutive_failures: int = 0) -> Alert:
        return replace(
            self, suppressed_count=suppressed_count, consecutive_failures=consecutive_failures
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["type"] = "alert"
        data["started_at"] = _iso(self.started_at)
        data["next_retry_at"] = _iso(self.next_retry_at)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["started_at"] = _from_iso(values.get("started_at"))
        values["next_retry_at"] = _from_iso(values.get("next_retry_at"))
        return cls(**values)


@dataclass(frozen=True)
class ReportRow:
    """One task's line in the failure report."""

    task_name: str
    runs: int
    failures: int
    retries: int = 0
    last_error: str = ""
    last_error_at: dt.datetime | None = None
    url: str = ""
    task_id: int | None = None

    @property
    def failure_rate(self) -> float:
        """Final failures per finished run, from 0.0 to 1.0."""
        return self.failures / self.runs if self.runs else 0.0


@dataclass(frozen=True)
class Report:
    """Failures per task over a period, worst first."""

    since: dt.datetime
    until: dt.datetime
    period: str
    rows: tuple[ReportRow, ...] = field(default_factory=tuple)
    total_runs: int = 0
    total_failures: int = 0

    event = "report"

    @property
    def has_failures(self) -> bool:
        return bool(self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "report",
            "since": _iso(self.since),
            "until": _iso(self.until),
            "period": self.period,
            "total_runs": self.total_runs,
            "total_failures": self.total_failures,
            "rows": [{**asdict(r), "last_error_at": _iso(r.last_error_at)} for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        rows = tuple(
            ReportRow(**{**r, "last_error_at": _from_iso(r.get("last_error_at"))})
            for r in data.get("rows", [])
        )
        return cls(
            since=_from_iso(data["since"]),  # type: ignore[arg-type]
            until=_from_iso(data["until"]),  # type: ignore[arg-type]
            period=data.get("period", ""),
            rows=rows,
            total_runs=data.get("total_runs", 0),
            total_failures=data.get("total_failures", 0),
        )


Message = Alert | Report


def message_from_dict(data: dict[str, Any]) -> Message:
    if data.get("type") == "report":
        return Report.from_dict(data)
    return Alert.from_dict(data)


def absolute_url(path: str) -> str:
    """``path`` joined to ``ORCHESTRATOR["BASE_URL"]``; just the path when that is not set."""
    base = conf.BASE_URL
    return urljoin(base + "/", path.lstrip("/")) if base else path


def run_url(run_id: int) -> str:
    try:
        path = reverse("admin:orchestrator_taskrun_change", args=[run_id])
    except NoReverseMatch:
        return ""
    return absolute_url(path)


def task_url(task_id: int) -> str:
    try:
        path = reverse("admin:orchestrator_scheduledtask_change", args=[task_id])
    except NoReverseMatch:
        return ""
    return absolute_url(path)


def connection_test_alert() -> Alert:
    """The message of the admin's "Send test notification" action."""
    return Alert(event=TEST_EVENT, task_name="orchestrator test notification")
