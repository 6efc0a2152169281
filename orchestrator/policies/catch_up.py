"""Which ticks a schedule entry sends when more than one of them fell due at once.

Beat was down, a standby took over, or the broker refused messages for a while: when the
scheduler next looks at an entry, several of its ticks may be due. The policy picks the ones to
send; the scheduler moves the entry past all of them either way (the watchdog, not the
scheduler, records the ticks nobody ran).

* ``skip``: none of them.
* ``once``: the latest.
* ``all``: each, oldest first, at most ``limit`` of them (the most recent).

A single due tick is the normal case, not a catch-up: every policy sends it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

_Tick = TypeVar("_Tick")


class CatchUp(enum.StrEnum):
    SKIP = "skip"
    ONCE = "once"
    ALL = "all"


@dataclass(frozen=True)
class CatchUpPolicy:
    kind: CatchUp = CatchUp.ONCE
    limit: int = 10

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("catch_up_limit must be at least 1")

    @property
    def keep(self) -> int:
        """How many of the most recent due ticks the scheduler must look at."""
        return self.limit if self.kind is CatchUp.ALL else 1

    def select(self, due: Sequence[_Tick]) -> list[_Tick]:
        """The ticks to send, oldest first, out of ``due`` (oldest first).

        ``due`` may hold only the most recent ticks (``keep`` of them, plus one to show that
        there were more than one): the older ones can never be chosen.
        """
        if len(due) <= 1:
            return list(due)
        if self.kind is CatchUp.SKIP:
            return []
        if self.kind is CatchUp.ONCE:
            return [due[-1]]
        return list(due[-self.limit :])


# What entries that are not orchestrator's scheduled tasks get: one run, as django-celery-beat's
# DatabaseScheduler sends it.
ONE_RUN = CatchUpPolicy(CatchUp.ONCE, 1)
