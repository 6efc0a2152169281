import pytest

from orchestrator.humanize import format_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0 s"),
        (-3, "0 s"),
        (0.0123, "12 ms"),
        (0.25, "250 ms"),
        (1.5, "1.5 s"),
        (5.04, "5 s"),
        (12.34, "12.3 s"),
        (59, "59 s"),
        (60, "1 min"),
        (65, "1 min 5 s"),
        (245, "4 min 5 s"),
        (3599.6, "1 h"),
        (5400, "1 h 30 min"),
        (7322, "2 h 2 min"),
        (93784, "1 d 2 h"),
        (3 * 86400, "3 d"),
    ],
)
def test_durations_read_like_people_write_them(seconds, text):
    assert format_duration(seconds) == text


def test_the_missing_marker_is_the_callers_choice():
    assert format_duration(None, missing="unknown") == "unknown"


def test_a_retry_schedule_is_worded_the_same_for_every_page():
    from orchestrator.humanize import retry_schedule
    from orchestrator.policies.retry import RetryPolicy

    schedule = retry_schedule(RetryPolicy(max_retries=4, delay=60), shown=2)
    assert (schedule.delays, schedule.more, schedule.last) == (("1 min", "2 min"), 2, "8 min")
    assert schedule.summary == (
        "1 min → 2 min → … 2 more, the last after 8 min (4 retries, 5 attempts at most)"
    )
    none = retry_schedule(RetryPolicy(max_retries=0), shown=5)
    assert none.summary == "No retries: the first failure is final."
