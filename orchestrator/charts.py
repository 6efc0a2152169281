"""Server-rendered SVG charts of runs: no JavaScript, no CDN assets, no Django.

Each bar is one run, oldest on the left; its height is the run's duration relative to the longest
run shown, its colour the outcome. Every bar carries a ``<title>`` so browsers show the details on
hover and screen readers can read them. The functions return SVG markup as text; callers mark it
safe (everything interpolated here is escaped).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from orchestrator.humanize import format_duration

# Outcome colours, readable on white and distinguishable for the common colour blindnesses
# (green/red are paired with different lightness).
STATUS_COLOURS: dict[str, str] = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "retried": "#ef8f00",
    "lost": "#6a1b9a",
    "running": "#1565c0",
    "skipped": "#9e9e9e",
}
UNKNOWN_COLOUR = "#616161"


@dataclass(frozen=True)
class RunPoint:
    """What a chart needs to know about one run."""

    status: str
    started_at: dt.datetime
    duration: float | None  # seconds; None while running or when never recorded
    label: str = ""  # status in words, for the tooltip


def _tooltip(point: RunPoint) -> str:
    when = point.started_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return f"{point.label or point.status} · {when} · {format_duration(point.duration)}"


def _bars(
    points: Sequence[RunPoint], *, left: float, top: float, width: float, height: float, gap: float
) -> list[str]:
    longest = max((p.duration or 0.0 for p in points), default=0.0)
    slot = width / max(len(points), 1)
    bar_width = max(slot - gap, 1.0)
    # A bar is never shorter than this, so failures with no duration still show their colour.
    floor = max(height * 0.12, 2.0)
    parts = []
    for index, point in enumerate(points):
        share = (point.duration or 0.0) / longest if longest > 0 else 0.0
        bar_height = floor + share * (height - floor)
        x = left + index * slot
        y = top + height - bar_height
        colour = STATUS_COLOURS.get(point.status, UNKNOWN_COLOUR)
        parts.append(
            f'<rect class="run run-{escape(point.status)}" x="{x:.1f}" y="{y:.1f}" '
            f'width="{bar_width:.1f}" height="{bar_height:.1f}" fill="{colour}">'
            f"<title>{escape(_tooltip(point))}</title></rect>"
        )
    return parts


def sparkline(points: Sequence[RunPoint], *, width: int = 140, height: int = 28) -> str:
    """A small bar chart of recent runs for a table cell (oldest first)."""
    label = f"Last {len(points)} runs" if points else "No runs yet"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sparkline" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}"><title>{escape(label)}</title>',
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="#d0d0d0"/>',
    ]
    if points:
        # Few runs get narrow bars on the right, so a new task's chart does not look stretched.
        slots = max(len(points), 20)
        slot = width / slots
        left = width - slot * len(points)
        parts += _bars(
            points, left=left, top=1, width=slot * len(points), height=height - 2, gap=1.5
        )
    parts.append("</svg>")
    return "".join(parts)


def duration_chart(points: Sequence[RunPoint], *, width: int = 760, height: int = 200) -> str:
    """A labelled bar chart of run durations and outcomes over time (oldest first)."""
    axis_left, axis_bottom, top = 64.0, 28.0, 10.0
    plot_width = width - axis_left - 8
    plot_height = height - axis_bottom - top
    longest = max((p.duration or 0.0 for p in points), default=0.0)
    title = f"Durations of the last {len(points)} runs" if points else "No runs yet"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="duration-chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        # Axes, the longest duration at the top, zero at the bottom.
        f'<line x1="{axis_left}" y1="{top}" x2="{axis_left}" y2="{top + plot_height}" '
        f'stroke="#9e9e9e"/>',
        f'<line x1="{axis_left}" y1="{top + plot_height}" x2="{width - 8}" '
        f'y2="{top + plot_height}" stroke="#9e9e9e"/>',
        f'<text x="{axis_left - 6}" y="{top + 10}" text-anchor="end" font-size="11" '
        f'fill="#424242">{escape(format_duration(longest))}</text>',
        f'<text x="{axis_left - 6}" y="{top + plot_height}" text-anchor="end" font-size="11" '
        f'fill="#424242">0</text>',
    ]
    if points:
        # At least 40 slots, filled from the right, so a handful of runs keeps narrow bars.
        slot = (plot_width - 2) / max(len(points), 40)
        used = slot * len(points)
        start = axis_left + 2 + (plot_width - 2 - used)
        parts += _bars(
            points,
            left=start,
            top=top,
            width=used,
            height=plot_height,
            gap=min(2.0, slot / 4),
        )
        first, last = points[0].started_at, points[-1].started_at
        parts.append(
            f'<text x="{width - 8}" y="{height - 8}" text-anchor="end" font-size="11" '
            f'fill="#424242">{escape(last.strftime("%Y-%m-%d %H:%M"))}</text>'
        )
        if used > 260:  # room for both dates without overlap
            parts.append(
                f'<text x="{start:.1f}" y="{height - 8}" font-size="11" fill="#424242">'
                f"{escape(first.strftime('%Y-%m-%d %H:%M'))}</text>"
            )
    else:
        parts.append(
            f'<text x="{axis_left + plot_width / 2}" y="{top + plot_height / 2}" '
            f'text-anchor="middle" font-size="13" fill="#757575">No runs yet</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
