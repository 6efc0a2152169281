"""Due times per schedule kind: the next tick, and the ticks due in a window (catch-up)."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from orchestrator.scheduler.timing import (
    ClockedTiming,
    CronTiming,
    IntervalTiming,
    celery_crontab_timing,
    solar_timing,
)

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "timezone", "after", "expected"),
    [
        ("* * * * *", "UTC", "2026-12-01 12:00:30", "2026-12-01 12:01:00"),
        ("* * * * *", "UTC", "2026-12-01 12:00:00", "2026-12-01 12:01:00"),
        ("*/15 * * * *", "UTC", "2026-12-01 12:00:00", "2026-12-01 12:15:00"),
        ("30 6 * * mon-fri", "UTC", "2026-12-04 07:00:00", "2026-12-07 06:30:00"),
        ("0 9 * * *", "Europe/Paris", "2026-12-01 07:59:00", "2026-12-01 08:00:00"),
        ("0 9 * * *", "Europe/Paris", "2026-07-01 06:59:00", "2026-07-01 07:00:00"),
        ("0 0 29 2 *", "UTC", "2026-03-01 00:00:00", "2028-02-29 00:00:00"),
    ],
)
def test_crontab_next_tick(expression, timezone, after, expected):
    assert CronTiming(expression, timezone).next_after(at(after)) == at(expected)


def test_crontab_ticks_due_are_the_most_recent_oldest_first():
    timing = CronTiming("* * * * *", "UTC")
    due = timing.due(at("2026-12-01 12:00:00"), at("2026-12-01 12:05:30"), keep=3)
    assert due == [at("2026-12-01 12:03"), at("2026-12-01 12:04"), at("2026-12-01 12:05")]


def test_a_long_outage_costs_keep_steps_not_every_tick():
    timing = CronTiming("* * * * *", "UTC")
    due = timing.due(at("2026-01-01 00:00"), at("2026-12-01 12:00"), keep=2)
    assert due == [at("2026-12-01 11:59"), at("2026-12-01 12:00")]


def test_crontab_due_is_empty_before_the_next_tick():
    timing = CronTiming("0 * * * *", "UTC")
    assert timing.due(at("2026-12-01 12:00"), at("2026-12-01 12:59:59"), keep=5) == []


def test_crontab_start_time_makes_the_first_tick_the_first_at_or_after_it():
    timing = CronTiming("*/10 * * * *", "UTC")
    assert timing.next_after(timing.start_base(at("2026-12-01 12:10:00"))) == at("2026-12-01 12:10")
    assert timing.next_after(timing.start_base(at("2026-12-01 12:10:01"))) == at("2026-12-01 12:20")


def test_interval_ticks_count_from_the_previous_tick():
    timing = IntervalTiming(dt.timedelta(seconds=90))
    assert timing.next_after(at("2026-12-01 12:00:10")) == at("2026-12-01 12:01:40")
    assert timing.due(at("2026-12-01 12:00:00"), at("2026-12-01 12:07:00"), keep=2) == [
        at("2026-12-01 12:04:30"),
        at("2026-12-01 12:06:00"),
    ]
    assert timing.due(at("2026-12-01 12:00:00"), at("2026-12-01 12:01:29"), keep=2) == []
    # The first run of an interval with a start time is at the start time.
    assert timing.next_after(timing.start_base(at("2026-12-01 13:00"))) == at("2026-12-01 13:00")


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        IntervalTiming(dt.timedelta(0))


def test_clocked_fires_once_at_its_time():
    timing = ClockedTiming(at("2026-12-01 12:30"))
    assert timing.next_after(at("2026-12-01 12:00")) == at("2026-12-01 12:30")
    assert timing.next_after(at("2026-12-01 12:30")) is None
    assert timing.due(at("2026-12-01 12:00"), at("2026-12-01 13:00"), keep=5) == [
        at("2026-12-01 12:30")
    ]


def test_solar_next_event_is_celerys_answer():
    timing = solar_timing("sunrise", 48.8566, 2.3522)  # Paris
    sunrise = timing.next_after(at("2026-06-21 12:00"))
    local = sunrise.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.date(), local.hour) == (dt.date(2026, 6, 22), 5)
    # A day later the next sunrise is about 24 hours on.
    following = timing.next_after(sunrise)
    assert (
        dt.timedelta(hours=23, minutes=58) < following - sunrise < dt.timedelta(hours=24, minutes=2)
    )


def test_a_crontab_orchestrator_cannot_read_falls_back_to_celerys_crontab():
    # A space inside a field: django-celery-beat stores it, Celery reads it, a five-field
    # expression cannot hold it.
    timing = celery_crontab_timing(
        {
            "minute": "0, 30",
            "hour": "12",
            "day_of_month": "*",
            "month_of_year": "*",
            "day_of_week": "sun",
        },
        "Europe/Paris",
    )
    tick = timing.next_after(at("2026-12-01 00:00"))  # a Tuesday
    assert tick == at("2026-12-06 11:00")  # Sunday 12:00 in Paris
    assert timing.next_after(tick) == at("2026-12-06 11:30")
