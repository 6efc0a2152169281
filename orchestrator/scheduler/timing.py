"""When a schedule fires: the next tick after a time, and the ticks due in a window.

One :class:`Timing` per kind of django-celery-beat schedule. The scheduler keeps entries in a heap
by their next tick and, when one is due, asks its timing which ticks fell due since the entry last
ran, so a catch-up policy can choose among them. Every datetime here is aware; ticks come back in
UTC.

* crontab: read with :mod:`orchestrator.cron` (Celery's own parser, so the same expression fires
  at the same times as with Celery's crontab), which can also walk backwards: the ticks of a long
  outage are found from the most recent one without visiting every older tick.
* interval: ``last + k * every``, anchored on the previous tick (as Celery's ``schedule`` is on
  ``last_run_at``), computed without iterating.
* solar: Celery's ``solar`` (ephem), forwards.
* clocked: the one ``clocked_time``.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Hashable
from functools import lru_cache
from typing import Any

from orchestrator import cron

UTC = dt.UTC
_EPSILON = dt.timedelta(microseconds=1)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
# A forward walk over ticks (solar, or a crontab that orchestrator.cron cannot read) gives up
# after this many steps and keeps what it found last: a catch-up never needs more.
MAX_FORWARD_STEPS = 10_000


class Timing:
    """When one schedule fires. Subclasses implement :meth:`next_after`."""

    kind = "schedule"
    #: Equal for timings that fire at the same times (a cache key).
    key: Hashable = None

    def next_after(self, after: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after ``after``; None if the schedule never fires again."""
        raise NotImplementedError

    def start_base(self, start: dt.datetime) -> dt.datetime:
        """The time to pass to :meth:`next_after` so that no tick before ``start`` comes out."""
        return start - _EPSILON

    def due(self, after: dt.datetime, until: dt.datetime, keep: int) -> list[dt.datetime]:
        """The ticks in ``(after, until]``, oldest first: the most recent ``max(keep, 2)``.

        Two at least, so the caller can tell one due tick from a catch-up.
        """
        found: deque[dt.datetime] = deque(maxlen=max(keep, 2))
        tick = self.next_after(after)
        steps = 0
        while tick is not None and tick <= until and steps < MAX_FORWARD_STEPS:
            found.append(tick)
            tick = self.next_after(tick)
            steps += 1
        return list(found)


class CronTiming(Timing):
    """A crontab row: five fields read in its time zone."""

    kind = "crontab"

    def __init__(self, expression: str, timezone: str) -> None:
        cron.validate(expression)
        cron.load_zone(timezone)
        self.expression = expression
        self.timezone = timezone
        self.key = ("crontab", expression, timezone)

    def next_after(self, after: dt.datetime) -> dt.datetime | None:
        # Only the minute of ``after`` matters: rows that ran in the same minute share the answer.
        return _cron_next(self.expression, self.timezone, _minute(after))

    def due(self, after: dt.datetime, until: dt.datetime, keep: int) -> list[dt.datetime]:
        # Ticks fall on whole minutes, so the minutes of both ends decide: rows that last ran (or
        # changed) in the same minute share one cached answer.
        return list(_cron_due(self.expression, self.timezone, _minute(after), _minute(until), keep))


def _minute(value: dt.datetime) -> dt.datetime:
    return value.astimezone(UTC).replace(second=0, microsecond=0)


@lru_cache(maxsize=8192)
def _cron_next(expression: str, timezone: str, minute: dt.datetime) -> dt.datetime | None:
    tick = cron.next_run(expression, timezone, minute)
    return None if tick is None else tick.astimezone(UTC)


@lru_cache(maxsize=1024)
def _cron_due(
    expression: str, timezone: str, after: dt.datetime, until: dt.datetime, keep: int
) -> tuple[dt.datetime, ...]:
    # Backwards from ``until``: an outage of a month costs ``keep`` steps, not 40,000.
    found: list[dt.datetime] = []
    tick = cron.previous_run(expression, timezone, until)
    while tick is not None and tick > after and len(found) < max(keep, 2):
        found.append(tick.astimezone(UTC))
        tick = cron.previous_run(expression, timezone, tick - _EPSILON)
    return tuple(reversed(found))


class IntervalTiming(Timing):
    """An interval row: every ``every``, counted from the previous tick."""

    kind = "interval"

    def __init__(self, every: dt.timedelta) -> None:
        if every <= dt.timedelta(0):
            raise ValueError(f"an interval must be positive, not {every}")
        self.every = every
        self.key = ("interval", every)

    def next_after(self, after: dt.datetime) -> dt.datetime | None:
        return (after + self.every).astimezone(UTC)

    def start_base(self, start: dt.datetime) -> dt.datetime:
        # The first run is at the start time itself, as django-celery-beat sends it.
        return start - self.every

    def due(self, after: dt.datetime, until: dt.datetime, keep: int) -> list[dt.datetime]:
        count = (until - after) // self.every
        first = max(1, count - max(keep, 2) + 1)
        return [(after + self.every * k).astimezone(UTC) for k in range(first, count + 1)]


class ClockedTiming(Timing):
    """A clocked row: one tick at ``clocked_time``."""

    kind = "clocked"

    def __init__(self, clocked_time: dt.datetime) -> None:
        self.clocked_time = clocked_time.astimezone(UTC)
        self.key = ("clocked", self.clocked_time)

    def next_after(self, after: dt.datetime) -> dt.datetime | None:
        return self.clocked_time if after < self.clocked_time else None


class CelerySchedule(Timing):
    """Any Celery schedule with ``remaining_estimate`` (solar; crontabs cron cannot read).

    The schedule must have been built with ``nowfun`` returning :data:`_EPOCH`, so that the next
    tick is ``_EPOCH + remaining_estimate(after)`` exactly, whatever the time now.
    """

    def __init__(self, schedule: Any, key: Hashable, kind: str) -> None:
        self.schedule = schedule
        self.key = key
        self.kind = kind

    def next_after(self, after: dt.datetime) -> dt.datetime | None:
        tick = _EPOCH + self.schedule.remaining_estimate(after)
        # A schedule that cannot find an event answers a time to look again: still a time.
        return tick.astimezone(UTC) if tick > after else after + dt.timedelta(days=1)


def epoch() -> dt.datetime:
    """The fixed "now" of the Celery schedules behind :class:`CelerySchedule`."""
    return _EPOCH


def solar_timing(event: str, latitude: float, longitude: float) -> Timing:
    from celery.schedules import solar

    # django-celery-beat's choices restrict ``event`` to celery's names; solar() checks it again.
    schedule = solar(event, latitude, longitude, nowfun=epoch)  # type: ignore[arg-type]
    return CelerySchedule(schedule, ("solar", event, latitude, longitude), "solar")


def celery_crontab_timing(fields: dict[str, str], timezone: str) -> Timing:
    """A crontab orchestrator.cron refuses, read by django-celery-beat's own crontab class."""
    from django_celery_beat.tzcrontab import TzAwareCrontab

    schedule = TzAwareCrontab(tz=cron.load_zone(timezone), **fields)
    schedule.nowfun = epoch
    return CelerySchedule(
        schedule, ("celery-crontab", tuple(sorted(fields.items())), timezone), "crontab"
    )
