"""Retry policy: how many retries, and how long to wait before each.

The backoff maths is tenacity's own wait strategies; this module only chooses the strategy,
applies the cap and adds the jitter rule ("never shorter than half the delay").
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

from tenacity import wait_exponential, wait_fixed, wait_incrementing
from tenacity.wait import wait_base

# Without a configured cap, delays still stop growing at a year: a longer wait is a mistake,
# and unbounded exponentials overflow floats.
MAX_DELAY = 365 * 24 * 3600.0


class BackoffKind(enum.StrEnum):
    FIXED = "fixed"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True)
class RetryDecision:
    """What to do after attempt ``attempt`` failed; ``reason`` says why an error is not retried
    when an exception rule, not the attempt count, decided it."""

    retry: bool
    countdown: float = 0.0
    attempt: int = 1
    max_attempts: int = 1
    reason: str = ""


def exception_names(exception_type: type[BaseException]) -> tuple[str, ...]:
    """The names a rule may use for ``exception_type`` or any of its bases, most specific first:
    ``requests.exceptions.Timeout`` and ``Timeout``, then its bases likewise. Builtins are named
    both bare (``ConnectionError``) and dotted (``builtins.ConnectionError``)."""
    names: list[str] = []
    for cls in exception_type.__mro__:
        if cls is object:
            continue
        names.append(f"{cls.__module__}.{cls.__qualname__}")
        names.append(cls.__qualname__)
    return tuple(names)


def match_rule(rules: Sequence[str], names: Sequence[str]) -> str | None:
    """The first of ``names`` (an exception's, from :func:`exception_names`) that a rule in
    ``rules`` names, or None."""
    wanted = set(rules)
    return next((name for name in names if name in wanted), None)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries after a failed attempt, and the delay before each.

    ``max_retries`` counts retries after the first attempt, so a task runs at most
    ``max_retries + 1`` times. Delays, for the n-th retry (n = 1, 2, ...):

    * fixed: ``delay``
    * linear: ``delay * n``
    * exponential: ``delay * 2 ** (n - 1)``

    each capped at ``backoff_max`` (when set). With ``jitter``, a delay ``d`` becomes a uniform
    value in ``[d / 2, d]``: retries of many tasks spread out, but never come sooner than half
    the configured delay. ``random`` is injectable so tests get exact values.
    """

    max_retries: int = 3
    backoff: BackoffKind = BackoffKind.EXPONENTIAL
    delay: float = 60.0
    backoff_max: float | None = None
    jitter: bool = False
    # Exception rules, by class name (bare or dotted), matched against the error and its bases:
    # an empty ``retry_on`` lets any error be retried; ``never_retry_on`` wins over it.
    retry_on: tuple[str, ...] = ()
    never_retry_on: tuple[str, ...] = ()
    random: Callable[[], float] = field(default=_random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        if self.delay < 0:
            raise ValueError("delay must be 0 or more")
        if self.backoff_max is not None and self.backoff_max < 0:
            raise ValueError("backoff_max must be 0 or more")
        object.__setattr__(self, "backoff", BackoffKind(self.backoff))
        object.__setattr__(self, "retry_on", tuple(self.retry_on))
        object.__setattr__(self, "never_retry_on", tuple(self.never_retry_on))

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def _wait_strategy(self) -> wait_base:
        cap = float(self.backoff_max if self.backoff_max is not None else MAX_DELAY)
        if self.backoff is BackoffKind.FIXED:
            return wait_fixed(min(self.delay, cap))
        if self.backoff is BackoffKind.LINEAR:
            return wait_incrementing(start=self.delay, increment=self.delay, max=cap)
        return wait_exponential(multiplier=float(self.delay), exp_base=2, max=cap)

    def base_delay(self, retry_number: int) -> float:
        """Delay before the ``retry_number``-th retry (1-based), without jitter."""
        if retry_number < 1:
            raise ValueError("retry_number is 1-based")
        # tenacity's strategies only read attempt_number from the retry state.
        state = SimpleNamespace(attempt_number=retry_number)
        return float(self._wait_strategy()(state))  # type: ignore[arg-type]

    def delay_for(self, retry_number: int) -> float:
        """Delay before the ``retry_number``-th retry (1-based), jitter applied."""
        base = self.base_delay(retry_number)
        if not self.jitter or base == 0:
            return base
        return base / 2 + self.random() * base / 2

    def retryable(self, names: Sequence[str]) -> str:
        """Why an error named ``names`` (see :func:`exception_names`) may not be retried at
        all, or "" when the exception rules allow it."""
        if names and (never := match_rule(self.never_retry_on, names)):
            return f"not retried: {names[1]} matches never_retry_on ({never})"
        if names and self.retry_on and not match_rule(self.retry_on, names):
            return f"not retried: {names[1]} is not in retry_on"
        return ""

    def decide(self, failed_attempt: int, names: Sequence[str] = ()) -> RetryDecision:
        """Decide what follows the failure of attempt ``failed_attempt`` (1-based) with an error
        named ``names`` (its class and bases, from :func:`exception_names`)."""
        if reason := self.retryable(names):
            return RetryDecision(
                retry=False, attempt=failed_attempt, max_attempts=self.max_attempts, reason=reason
            )
        if failed_attempt <= self.max_retries:
            return RetryDecision(
                retry=True,
                countdown=self.delay_for(failed_attempt),
                attempt=failed_attempt,
                max_attempts=self.max_attempts,
            )
        return RetryDecision(retry=False, attempt=failed_attempt, max_attempts=self.max_attempts)

    def schedule(self) -> list[float]:
        """The delays before every retry this policy allows, without jitter."""
        return [self.base_delay(n) for n in range(1, self.max_retries + 1)]
