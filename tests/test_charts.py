"""Server-rendered SVG charts."""

import datetime as dt

from orchestrator import charts

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_charts_escape_their_labels_and_draw_one_bar_per_run() -> None:
    points = [
        charts.RunPoint("succeeded", T0, 2.0, label="<b>ok</b>"),
        charts.RunPoint("failed", T0, None, label="Failed"),
    ]
    svg = charts.sparkline(points)
    assert svg.count("<rect") == 2
    assert "<b>" not in svg and "&lt;b&gt;ok&lt;/b&gt;" in svg
    assert charts.STATUS_COLOURS["failed"] in svg
    assert "No runs yet" in charts.duration_chart([])


def test_bar_heights_follow_the_longest_run_shown() -> None:
    points = [
        charts.RunPoint("succeeded", T0 + dt.timedelta(minutes=n), float(seconds))
        for n, seconds in enumerate([1, 4, 2])
    ]
    svg = charts.duration_chart(points, width=300, height=100)
    assert svg.count("<rect") == 3
    assert "4 s" in svg  # the longest run names its duration in its tooltip


def test_an_unknown_status_gets_the_neutral_colour() -> None:
    svg = charts.sparkline([charts.RunPoint("weird", T0, 1.0)])
    assert charts.UNKNOWN_COLOUR in svg
