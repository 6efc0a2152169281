"""In-process schedulers with injected clocks and a recording producer: no broker, no sleeping."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from freezegun import freeze_time

from orchestrator.scheduler.beat import Scheduler
from orchestrator.scheduler.entries import Entry
from tests.celery_app import app

UTC = dt.UTC
START = dt.datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC)


class Clock:
    """Wall clock and monotonic clock that move only when told.

    Django's own clock (``timezone.now()``, which stamps ``date_changed``) is frozen to the wall
    clock too, as the admin's saves would stamp it; the database's clock is left alone.
    """

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now
        self.mono = 1000.0
        self._frozen = freeze_time(now)
        self._frozen_clock = self._frozen.start()

    def stop(self) -> None:
        self._frozen.stop()

    def wall(self) -> dt.datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)
        self.mono += seconds
        self._frozen_clock.move_to(self.now)

    def set(self, when: dt.datetime) -> None:
        self.advance((when - self.now).total_seconds())


class _NoBatchProducer:
    """Stands for kombu's producer: the recording scheduler never publishes through it."""


class RecordingScheduler(Scheduler):
    """The real scheduler, with ``_send`` recording (name, tick, kwargs, options) instead.

    ``fail_after`` makes the n-th send and every later one raise, as a broker outage would.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[tuple[str, dt.datetime, dict[str, Any], dict[str, Any]]] = []
        self.fail_after: int | None = None
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def producer(self) -> Any:
        return _NoBatchProducer()

    def _send(self, entry: Entry, tick: dt.datetime, producer: Any) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("broker refused the message")
        kwargs = dict(entry.kwargs)
        if entry.task == "orchestrator.run_scheduled_task":
            kwargs["scheduled_for"] = tick.isoformat()
        options = dict(entry.options)
        options["headers"] = {**entry.headers, "celery_beat_task": True}
        self.sent.append((entry.name, tick, kwargs, options))

    def names(self) -> list[str]:
        return [name for name, *_ in self.sent]


@pytest.fixture
def clock() -> Iterator[Clock]:
    clock = Clock()
    yield clock
    clock.stop()


@pytest.fixture
def make_scheduler(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., RecordingScheduler]]:
    """``make_scheduler()``: a scheduler on the fake clock (it loads the schedule at once)."""
    # Celery's backend-cleanup entry (installed as django-celery-beat installs it) is left out,
    # so each test sees only its own entries.
    monkeypatch.setitem(app.conf, "result_expires", None)
    made: list[RecordingScheduler] = []

    def make(**kwargs: Any) -> RecordingScheduler:
        kwargs.setdefault("max_interval", 1)
        scheduler = RecordingScheduler(
            app=app, clock=clock.wall, monotonic=clock.monotonic, **kwargs
        )
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.lease.leader = False  # no release query after the test's database is gone
