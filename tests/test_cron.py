import datetime as dt

import pytest

from orchestrator import cron

UTC = dt.UTC


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("61 * * * *", "minute (0-59)"),
        ("* 24 * * *", "hour (0-23)"),
        ("* * 0 * *", "day of month (1-31)"),
        ("* * 32 * *", "day of month"),
        ("* * * 13 *", "month (1-12"),
        ("* * * * 8", "day of week"),
        ("*/0 * * * *", "minute"),
        ("1,,2 * * * *", "minute"),
        ("-1 * * * *", "minute"),
        ("a * * * *", "minute"),
        ("* * * *", "has 4"),
        ("* * * * * *", "has 6"),
        ("", "has 0"),
        ("* * 31 2 *", "never occurs"),
    ],
)
def test_invalid_expressions_say_which_field_is_wrong(expression, fragment):
    with pytest.raises(cron.CronError, match=None) as caught:
        cron.validate(expression)
    assert fragment in str(caught.value)


def test_non_text_is_refused():
    with pytest.raises(cron.CronError):
        cron.validate(None)  # type: ignore[arg-type]


def test_valid_expressions_are_normalised():
    assert str(cron.validate("  30   6 * JAN,feb MON-fri ")) == "30 6 * jan,feb mon-fri"


def test_next_run_reads_the_expression_in_its_time_zone():
    saturday_evening = dt.datetime(2026, 11, 28, 22, 40, 13, tzinfo=UTC)
    nxt = cron.next_run("30 9 * * mon-fri", "Europe/Paris", saturday_evening)
    assert nxt == dt.datetime(2026, 11, 30, 8, 30, tzinfo=UTC)


def test_next_run_is_strictly_after_the_given_time():
    at = dt.datetime(2026, 1, 1, 12, 15, tzinfo=UTC)
    assert cron.next_run("*/15 * * * *", "UTC", at) == dt.datetime(2026, 1, 1, 12, 30, tzinfo=UTC)


def test_next_run_skips_a_nonexistent_local_time_on_spring_forward():
    # 2026-03-29 02:30 does not exist in Paris; beat fires at the normalised time (03:30 local).
    before = dt.datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    nxt = cron.next_run("30 2 * * *", "Europe/Paris", before)
    assert nxt is not None and nxt.astimezone(UTC) == dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def test_previous_run_is_the_current_tick():
    at = dt.datetime(2026, 1, 1, 12, 17, 42, tzinfo=UTC)
    assert cron.previous_run("*/15 * * * *", "UTC", at) == dt.datetime(
        2026, 1, 1, 12, 15, tzinfo=UTC
    )


def test_leap_day_schedule_finds_the_next_leap_year():
    nxt = cron.next_run("0 0 29 2 *", "UTC", dt.datetime(2026, 3, 1, tzinfo=UTC))
    assert nxt == dt.datetime(2028, 2, 29, tzinfo=UTC)


def test_describe_puts_the_expression_in_words():
    assert cron.describe("30 9 * * 1-5") == "At 09:30, Monday through Friday"
    assert cron.describe("*/15 * * * *") == "Every 15 minutes"
    assert cron.describe("not cron") == "not cron"


def test_fire_times_between_lists_the_ticks_of_a_window():
    import datetime as dt

    from orchestrator.cron import fire_times_between

    start = dt.datetime(2026, 3, 1, 12, 0, 30, tzinfo=dt.UTC)
    ticks = fire_times_between("*/15 * * * *", "UTC", start, start + dt.timedelta(hours=1), 10)
    assert [t.strftime("%H:%M") for t in ticks] == ["12:15", "12:30", "12:45", "13:00"]
    assert fire_times_between("* * * * *", "UTC", start, start + dt.timedelta(hours=1), 3)[-1] == (
        dt.datetime(2026, 3, 1, 12, 3, tzinfo=dt.UTC)
    )
    assert fire_times_between("* * * * *", "UTC", start, start, 5) == []
