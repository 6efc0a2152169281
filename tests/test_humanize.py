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
