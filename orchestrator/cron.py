"""Five-field cron expressions, parsed with Celery's own crontab parser.

Using Celery's parser means an expression accepted here is one that beat can run, with the same
meaning: day names and month names are allowed, day of week runs 0-6 from Sunday, and when both
day of month and day of week are restricted a day must match both (Celery's rule, not Vixie
cron's "either").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab

FIELD_NAMES = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
FIELD_LABELS = {
    "minute": "minute (0-59)",
    "hour": "hour (0-23)",
    "day_of_month": "day of month (1-31)",
    "month_of_year": "month (1-12 or jan-dec)",
    "day_of_week": "day of week (0-6 from Sunday, or sun-sat)",
}
# How far ahead next_run() looks before deciding an expression never fires.
_SEARCH_DAYS = 366 * 5


class CronError(ValueError):
    """The expression is not a valid 5-field cron expression; the message says why."""


@dataclass(frozen=True)
class CronFields:
    minute: str
    hour: str
    day_of_month: str
    month_of_year: str
    day_of_week: str

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in FIELD_NAMES}

    def __str__(self) -> str:
        return " ".join(getattr(self, name) for name in FIELD_NAMES)


def load_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; raise :class:`CronError` when zoneinfo cannot load it.

    Besides ZoneInfoNotFoundError and ValueError, zoneinfo lets OSError through for the names of
    tzdata's folders ("Europe") and for names too long to be a file name: those must read as an
    unknown zone, not crash a page that shows a row edited in the database.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise CronError(
            f"{name!r} is not a known time zone. Use an IANA name such as 'UTC' or 'Europe/Paris'."
        ) from None


def split(expression: str) -> CronFields:
    """Split and normalise ``expression`` into its five fields (lower case, no extra spaces)."""
    if not isinstance(expression, str):
        raise CronError("Enter a cron expression as text, such as '*/15 * * * *'.")
    parts = expression.lower().split()
    if len(parts) != 5:
        raise CronError(
            f"A cron expression has 5 fields (minute hour day-of-month month day-of-week), "
            f"separated by spaces; this one has {len(parts)}. Example: '30 6 * * mon-fri'."
        )
    return CronFields(*parts)


class _ExpandedCrontab(Protocol):
    """The sets of matching values that celery's crontab computes in ``__init__`` (celery-types
    does not declare these attributes)."""

    minute: set[int]
    hour: set[int]
    day_of_month: set[int]
    month_of_year: set[int]
    day_of_week: set[int]


@lru_cache(maxsize=1024)
def _expanded(expression: str) -> tuple[frozenset[int], ...]:
    fields = split(expression)
    for name, value in fields.as_dict().items():
        try:
            crontab(**{name: value})
        except Exception as err:  # celery raises ValueError and its own ParseException
            raise CronError(f"Invalid {FIELD_LABELS[name]} field {value!r}: {err}") from None
    try:
        schedule = cast(_ExpandedCrontab, crontab(**fields.as_dict()))
    except Exception as err:
        raise CronError(f"Invalid cron expression {expression!r}: {err}") from None
    return (
        frozenset(schedule.minute),
        frozenset(schedule.hour),
        frozenset(schedule.day_of_month),
        frozenset(schedule.month_of_year),
        frozenset(schedule.day_of_week),
    )


def validate(expression: str) -> CronFields:
    """Return the normalised fields of ``expression``; raise :class:`CronError` if it is invalid."""
    fields = split(expression)
    _expanded(str(fields))
    return fields


# Cached: cron_descriptor loads its translation catalogue on every call, and the dashboard and the
# admin describe every task they list.
@lru_cache(maxsize=4096)
def describe(expression: str) -> str:
    """The expression in words ("At 06:30 AM, Monday through Friday")."""
    from cron_descriptor import Options, get_description

    options = Options()
    options.use_24hour_time_format = True
    options.day_of_week_start_index_zero = True
    try:
        return str(get_description(str(validate(expression)), options))
    except Exception:
        return expression


def _fire_times(
    expression: str, timezone: str, start: dt.datetime, forward: bool
) -> Iterator[dt.datetime]:
    """The times the expression fires, from the day of ``start`` onwards (or backwards)."""
    minutes, hours, days, months, weekdays = _expanded(str(validate(expression)))
    zone = load_zone(timezone)
    local_start = start.astimezone(zone)
    day = local_start.date()
    step = dt.timedelta(days=1 if forward else -1)
    sorted_hours = sorted(hours, reverse=not forward)
    sorted_minutes = sorted(minutes, reverse=not forward)
    # On the first day, hours that lie wholly on the wrong side of ``start`` cannot yield a
    # candidate: skipping them saves up to 1,440 candidates for an every-minute expression. One
    # hour of slack keeps the wall times that a DST change moves by an hour.
    if forward:
        first_day_hours = [h for h in sorted_hours if h >= local_start.hour - 1]
    else:
        first_day_hours = [h for h in sorted_hours if h <= local_start.hour + 1]
    for index in range(_SEARCH_DAYS):
        # Celery numbers weekdays from Sunday = 0; Python's isoweekday gives Sunday = 7.
        if day.month in months and day.day in days and day.isoweekday() % 7 in weekdays:
            for hour in first_day_hours if index == 0 else sorted_hours:
                for minute in sorted_minutes:
                    candidate = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=zone)
                    # A wall time that does not exist (spring forward) or repeats (fall back) is
                    # normalised through UTC, as beat does.
                    yield candidate.astimezone(dt.UTC).astimezone(zone)
        day += step


def next_run(expression: str, timezone: str, after: dt.datetime) -> dt.datetime | None:
    """The first time strictly after ``after`` at which the expression fires, in ``timezone``.

    Returns an aware datetime, or None when the expression never fires (such as Feb 30).
    """
    first = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    return next((t for t in _fire_times(expression, timezone, first, True) if t >= first), None)


def previous_run(expression: str, timezone: str, at: dt.datetime) -> dt.datetime | None:
    """The last time at or before ``at`` at which the expression fires (the current tick)."""
    last = at.replace(second=0, microsecond=0)
    return next((t for t in _fire_times(expression, timezone, last, False) if t <= last), None)


def fire_times_between(
    expression: str, timezone: str, after: dt.datetime, until: dt.datetime, limit: int
) -> list[dt.datetime]:
    """The times in ``(after, until]`` at which the expression fires, oldest first, at most
    ``limit`` of them (the oldest)."""
    if until <= after:
        return []
    first = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    times: list[dt.datetime] = []
    for moment in _fire_times(expression, timezone, first, True):
        if moment < first:
            continue
        if moment > until or len(times) >= limit:
            break
        times.append(moment)
    return times
