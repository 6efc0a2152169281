"""Writes that survive a dropped database connection."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import OperationalError, transaction

from orchestrator import reconnect


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(reconnect, "sleep", slept.append)
    return slept


def flaky(failures: int) -> Any:
    calls: list[int] = []

    def write() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise OperationalError("server closed the connection unexpectedly")
        return "written"

    write.calls = calls  # type: ignore[attr-defined]
    return write


@pytest.mark.django_db(transaction=True)
def test_a_dropped_connection_is_tried_again_backing_off(sleeps: list[float], caplog: Any) -> None:
    write = flaky(failures=3)
    assert reconnect.with_reconnect(write, what="saving x") == "written"
    assert sleeps == [0.5, 1.0, 2.0]
    assert caplog.text.count("Database error while saving x") == 3


@pytest.mark.django_db(transaction=True)
def test_it_gives_up_after_five_tries_and_raises_the_last_error(sleeps: list[float]) -> None:
    write = flaky(failures=99)
    with pytest.raises(OperationalError):
        reconnect.with_reconnect(write, what="saving x")
    assert len(write.calls) == reconnect.ATTEMPTS == 5
    assert sleeps == [0.5, 1.0, 2.0, 4.0]


@pytest.mark.django_db(transaction=True)
def test_other_errors_are_not_retried(sleeps: list[float]) -> None:
    def write() -> None:
        raise ValueError("a bug, not the network")

    with pytest.raises(ValueError):
        reconnect.with_reconnect(write, what="saving x")
    assert sleeps == []


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_the_write_runs_once(sleeps: list[float]) -> None:
    write = flaky(failures=1)
    with pytest.raises(OperationalError), transaction.atomic():
        reconnect.with_reconnect(write, what="saving x")
    assert (len(write.calls), sleeps) == (1, [])
