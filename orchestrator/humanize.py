"""Values in words for people: the one duration and retry-schedule wording of every page."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.policies.retry import RetryPolicy

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


@dataclass(frozen=True)
class RetrySchedule:
    """A retry policy's delays in words, the first ``shown`` of them, for every page."""

    delays: tuple[str, ...]  # the delays shown, in order
    more: int  # retries after those, not shown
    last: str  # the delay before the last retry ("" without retries)
    retries: int
    attempts: int
    jitter: bool

    @property
    def summary(self) -> str:
        """``1 min → 2 min → … 3 more, the last after 16 min (5 retries, 6 attempts at most)``."""
        if not self.retries:
            return "No retries: the first failure is final."
        text = " → ".join(self.delays)
        if self.more:
            text += f" → … {self.more} more, the last after {self.last}"
        text += f" ({self.retries} retries, {self.attempts} attempts at most)"
        if self.jitter:
            text += "; with jitter each wait falls between half of it and all of it"
        return text


def retry_schedule(policy: RetryPolicy, shown: int) -> RetrySchedule:
    """The delays of ``policy`` in words, the first ``shown`` of them."""
    delays = policy.schedule()
    return RetrySchedule(
        delays=tuple(format_duration(d) for d in delays[:shown]),
        more=max(len(delays) - shown, 0),
        last=format_duration(delays[-1]) if delays else "",
        retries=len(delays),
        attempts=policy.max_attempts,
        jitter=policy.jitter,
    )
