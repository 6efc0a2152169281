"""Schedule entries: what the scheduler keeps in memory for each enabled ``PeriodicTask`` row.

An entry carries what a send needs (task name, arguments, ``apply_async`` options), its
:class:`~orchestrator.scheduler.timing.Timing`, and the run state (``last_run_at``,
``total_run_count``). The options are the ones django-celery-beat's ``ModelEntry`` forwards:
``queue``, ``exchange``, ``routing_key``, ``priority`` (when not None), ``expires`` (``expires``
or ``expire_seconds``) and the row's ``headers`` plus ``periodic_task_name``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from celery.beat import ScheduleEntry
from kombu.utils.json import loads

from orchestrator import cron
from orchestrator.scheduler.timing import (
    ClockedTiming,
    CronTiming,
    IntervalTiming,
    Timing,
    celery_crontab_timing,
    solar_timing,
)
from orchestrator.task_names import RUN_SCHEDULED_TASK

UTC = dt.UTC
# The Celery task every orchestrator ScheduledTask sends; its messages carry their tick.
DISPATCH_TASK = RUN_SCHEDULED_TASK
OPTION_FIELDS = ("queue", "exchange", "routing_key", "priority")


class EntryError(ValueError):
    """A ``PeriodicTask`` row the scheduler cannot serve (bad JSON, no schedule)."""


@dataclass(eq=False)
class Entry:
    """One enabled ``PeriodicTask`` row, ready to send.

    ``last_run_at`` is the tick the entry last ran for (the scheduler writes ticks, not send
    times, so an interval schedule does not drift by the send lag). A row that never ran counts
    from ``date_changed``, as django-celery-beat does; with a ``start_time``, from that.
    """

    pk: int
    name: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    timing: Timing
    last_run_at: dt.datetime | None
    date_changed: dt.datetime
    total_run_count: int = 0
    one_off: bool = False
    start_time: dt.datetime | None = None
    expires: dt.datetime | None = None
    fingerprint: Hashable = None
    headers: dict[str, Any] = field(default_factory=dict)
    # The database's MD5 of the row when it was read (see loader.reconcile).
    row_hash: str | None = None

    @property
    def scheduled_task_id(self) -> int | None:
        """The ScheduledTask id of an orchestrator dispatch entry (its only argument)."""
        if self.task != DISPATCH_TASK or len(self.args) != 1:
            return None
        value = self.args[0]
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def base(self) -> dt.datetime:
        """The time after which this entry's next tick falls."""
        base = self.last_run_at or self.date_changed
        if self.start_time is not None:
            start_base = self.timing.start_base(self.start_time)
            if self.last_run_at is None or base < start_base:
                base = start_base
        return base

    def next_due(self) -> dt.datetime | None:
        """The next tick, or the expiry time if that comes first (None: nothing more to do)."""
        tick = self.timing.next_after(self.base())
        if self.expires is not None and (tick is None or tick >= self.expires):
            return self.expires
        return tick

    def is_expired(self, now: dt.datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def as_schedule_entry(self, app: Any) -> ScheduleEntry:
        """A Celery ``ScheduleEntry`` view of this entry (for code that inspects a scheduler)."""
        entry = ScheduleEntry.__new__(ScheduleEntry)
        entry.__dict__.update(
            app=app,
            name=self.name,
            task=self.task,
            args=self.args,
            kwargs=self.kwargs,
            options=self.options,
            schedule=self.timing,
            last_run_at=self.last_run_at or self.date_changed,
            total_run_count=self.total_run_count,
        )
        return entry


def timing_of(row: Any) -> Timing:
    """The timing of a ``PeriodicTask`` row with its schedule loaded (select_related)."""
    if row.crontab_id is not None:
        schedule = row.crontab
        fields = {
            "minute": schedule.minute,
            "hour": schedule.hour,
            "day_of_month": schedule.day_of_month,
            "month_of_year": schedule.month_of_year,
            "day_of_week": schedule.day_of_week,
        }
        timezone = str(schedule.timezone)
        try:
            return CronTiming(" ".join(fields.values()), timezone)
        except cron.CronError:
            return celery_crontab_timing(fields, timezone)
    if row.interval_id is not None:
        schedule = row.interval
        return IntervalTiming(dt.timedelta(**{schedule.period: schedule.every}))
    if row.solar_id is not None:
        schedule = row.solar
        return solar_timing(schedule.event, float(schedule.latitude), float(schedule.longitude))
    if row.clocked_id is not None:
        clocked_time = row.clocked.clocked_time
        if clocked_time.tzinfo is None:
            clocked_time = clocked_time.replace(tzinfo=UTC)
        return ClockedTiming(clocked_time)
    raise EntryError("it has no schedule (crontab, interval, solar or clocked)")


def options_of(row: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``apply_async`` options and headers django-celery-beat's ``ModelEntry`` forwards."""
    options: dict[str, Any] = {}
    for option in OPTION_FIELDS:
        value = getattr(row, option)
        if value is not None:
            options[option] = value
    expires = row.expires_
    if expires:
        options["expires"] = expires
    try:
        headers = loads(row.headers or "{}")
    except ValueError as err:
        raise EntryError(f"its headers are not valid JSON: {err}") from None
    if not isinstance(headers, dict):
        raise EntryError("its headers are not a JSON object")
    headers["periodic_task_name"] = row.name
    options["headers"] = headers
    return options, headers


def fingerprint_of(row: Any, timing: Timing) -> Hashable:
    """What must change for the entry to be rebuilt (its run state is not part of it)."""
    return (
        row.name,
        row.task,
        row.args,
        row.kwargs,
        row.queue,
        row.exchange,
        row.routing_key,
        row.priority,
        row.expires,
        row.expire_seconds,
        row.one_off,
        row.start_time,
        row.headers,
        timing.key,
    )


def build_entry(row: Any, timing: Timing | None = None) -> Entry:
    """The entry of ``row`` (a ``PeriodicTask`` with its schedule loaded); raise EntryError."""
    if timing is None:
        try:
            timing = timing_of(row)
        except EntryError:
            raise
        except Exception as err:  # a schedule row edited around its validators
            raise EntryError(f"its schedule cannot be read: {err}") from None
    try:
        args = loads(row.args or "[]")
        kwargs = loads(row.kwargs or "{}")
    except ValueError as err:
        raise EntryError(f"its arguments are not valid JSON: {err}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise EntryError("args must be a JSON array and kwargs a JSON object")
    options, headers = options_of(row)
    return Entry(
        pk=row.pk,
        name=row.name,
        task=row.task,
        args=args,
        kwargs=kwargs,
        options=options,
        timing=timing,
        last_run_at=_aware(row.last_run_at),
        date_changed=_aware(row.date_changed) or dt.datetime.now(UTC),
        total_run_count=row.total_run_count,
        one_off=row.one_off,
        start_time=_aware(row.start_time),
        expires=_aware(row.expires),
        fingerprint=fingerprint_of(row, timing),
        headers=headers,
    )


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # Naive values come from projects with USE_TZ = False: django-celery-beat reads them as UTC.
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
