"""Values in words for people: the one duration format of the admin, dashboard and alerts."""

from __future__ import annotations

_UNITS = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))


def format_duration(seconds: float | None, missing: str = "-") -> str:
    """``seconds`` as short words: "250 ms", "12.3 s", "4 min 5 s", "2 h 10 min", "3 d".

    At most the two largest units, leaving out zeros: enough to read a duration at a glance.
    """
    if seconds is None:
        return missing
    seconds = max(seconds, 0.0)
    if 0 < seconds < 0.9995:
        return f"{round(seconds * 1000)} ms"
    if seconds < 59.95:
        return f"{round(seconds, 1):g} s"
    rest = round(seconds)
    parts = []
    for size, unit in _UNITS:
        value, rest = divmod(rest, size)
        if value:
            parts.append(f"{value} {unit}")
    return " ".join(parts[:2])
