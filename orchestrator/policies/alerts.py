"""Alert policy: which alerts go out, which are held back, and how deliveries are retried.

Pure code (no Django, no Celery): the caller loads the stored state, asks for a decision and
stores the state the decision returns. Times are aware datetimes passed in, never read here, so
tests give exact instants.
"""

from __future__ import annotations

import datetime as dt
import enum
import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from orchestrator.policies.retry import BackoffKind, RetryPolicy


class Action(enum.StrEnum):
    SEND = "send"
    # Inside the cooldown: not sent, counted, and the count is reported by the next alert.
    SUPPRESS = "suppress"
    # Below the channel's "alert after N failures" threshold: not sent, not counted.
    HOLD = "hold"
    # Nothing to say (a recovery with no alerted failure before it): no delivery at all.
    IGNORE = "ignore"


@dataclass(frozen=True)
class AlertState:
    """What is remembered per channel, task and event."""

    last_sent_at: dt.datetime | None = None
    suppressed_count: int = 0
    awaiting_recovery: bool = False


@dataclass(frozen=True)
class AlertDecision:
    """The action to take, the state to store, and what the alert reports."""

    action: Action
    state: AlertState
    # For SEND: alerts suppressed since the previous one; for SUPPRESS: the running count.
    suppressed_count: int = 0
    reason: str = ""

    @property
    def send(self) -> bool:
        return self.action is Action.SEND


@dataclass(frozen=True)
class AlertPolicy:
    """Cooldown and threshold of one channel.

    * ``cooldown``: seconds after an alert during which the same event for the same task is
      suppressed and counted; 0 sends every alert.
    * ``alert_after_failures``: a final failure is alerted only once this many final failures
      happened in a row.

    A recovery is sent exactly once after a final failure that was alerted, whatever the
    cooldown: on-call people must learn that the incident they were paged for is over.
    """

    cooldown: float = 900.0
    alert_after_failures: int = 1

    def __post_init__(self) -> None:
        if self.cooldown < 0:
            raise ValueError("cooldown must be 0 or more")
        if self.alert_after_failures < 1:
            raise ValueError("alert_after_failures must be 1 or more")

    def in_cooldown(self, state: AlertState, now: dt.datetime) -> bool:
        if state.last_sent_at is None or self.cooldown == 0:
            return False
        return (now - state.last_sent_at).total_seconds() < self.cooldown

    def _throttle(self, state: AlertState, now: dt.datetime, *, failure: bool) -> AlertDecision:
        if self.in_cooldown(state, now):
            count = state.suppressed_count + 1
            return AlertDecision(
                Action.SUPPRESS,
                replace(state, suppressed_count=count),
                suppressed_count=count,
                reason=f"cooldown of {self.cooldown:g}s since the alert at "
                f"{state.last_sent_at:%Y-%m-%d %H:%M:%S %Z}".rstrip(),
            )
        new_state = AlertState(
            last_sent_at=now,
            suppressed_count=0,
            awaiting_recovery=True if failure else state.awaiting_recovery,
        )
        return AlertDecision(Action.SEND, new_state, suppressed_count=state.suppressed_count)

    def on_retry(self, state: AlertState, now: dt.datetime) -> AlertDecision:
        """An attempt failed and a retry is scheduled."""
        return self._throttle(state, now, failure=False)

    def on_failure(
        self, state: AlertState, now: dt.datetime, consecutive_failures: int = 1
    ) -> AlertDecision:
        """A final failure; ``consecutive_failures`` counts it and the final failures before it
        since the last success."""
        if consecutive_failures < self.alert_after_failures:
            return AlertDecision(
                Action.HOLD,
                state,
                suppressed_count=state.suppressed_count,
                reason=f"{consecutive_failures} final failure(s) in a row; this channel alerts "
                f"from {self.alert_after_failures}",
            )
        return self._throttle(state, now, failure=True)

    def on_recovery(self, failure_state: AlertState, now: dt.datetime) -> AlertDecision:
        """The first success after a final failure; ``failure_state`` is the state of the
        *failure* event, which the returned state replaces."""
        if not failure_state.awaiting_recovery:
            return AlertDecision(Action.IGNORE, failure_state, reason="no alerted failure")
        # The failure cooldown keeps running: a task flapping between failure and success
        # inside one cooldown pages once, and its next recovery follows the next alert.
        return AlertDecision(Action.SEND, replace(failure_state, awaiting_recovery=False))


@dataclass(frozen=True)
class DeliveryRetryPolicy:
    """How one notification is retried inside the delivery task.

    Attempts stop after ``max_attempts`` or before the total time would pass ``max_seconds``,
    whichever comes first, so a dead endpoint holds a worker slot for a bounded time. A server's
    ``Retry-After`` is honoured as given (never shortened); when it does not fit in the budget,
    the delivery gives up rather than hammer a rate-limited endpoint. Otherwise the delay before
    retry n is exponential (``base_delay * 2 ** (n - 1)``, capped at ``max_delay``) with jitter
    between half and all of it.
    """

    max_attempts: int = 5
    max_seconds: float = 60.0
    base_delay: float = 1.0
    max_delay: float = 15.0
    jitter: bool = True
    random: Callable[[], float] = field(default=_random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be 1 or more")
        if self.max_seconds < 0:
            raise ValueError("max_seconds must be 0 or more")

    def backoff(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.max_attempts - 1,
            backoff=BackoffKind.EXPONENTIAL,
            delay=self.base_delay,
            backoff_max=self.max_delay,
            jitter=self.jitter,
            random=self.random,
        )

    def delay_for(self, failed_attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
        if retry_after is not None:
            return max(0.0, float(retry_after))
        return self.backoff().delay_for(failed_attempt)
