"""Making what a task returned or raised fit for the database."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from orchestrator.sanitize import error_message, error_type, json_safe_result, safe_repr, truncate


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (None, None),
        ((1, "a"), [1, "a"]),
        ({"when": dt.date(2026, 1, 2)}, {"when": "2026-01-02"}),
        (float("nan"), "nan"),
        ({1, 2}, "{1, 2}"),
        ("nul\x00byte", "'nul\\x00byte'"),
    ],
)
def test_results_are_made_json_safe(value: Any, stored: Any) -> None:
    assert json_safe_result(value, 1000) == stored


@pytest.mark.parametrize(
    ("text", "limit", "keep", "expected"),
    [
        ("short", 10, "head", "short"),
        ("a" * 40, 30, "head", "a" * 9 + "… [31 characters cut]"),
        ("a" * 30 + "END", 30, "tail", "… [24 characters cut]" + "a" * 6 + "END"),
        ("abcdef", 3, "head", "abc"),
        ("abcdef", 0, "head", ""),
    ],
)
def test_truncate_keeps_within_the_limit_and_says_how_much_was_cut(
    text: str, limit: int, keep: str, expected: str
) -> None:
    assert truncate(text, limit, keep=keep) == expected
    assert len(truncate(text, limit, keep=keep)) <= max(limit, 0)


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_a_broken_repr_is_named_rather_than_raised() -> None:
    assert safe_repr(Unprintable()) == "<unrepresentable Unprintable: RuntimeError>"
    assert json_safe_result(Unprintable(), 100) == "<unrepresentable Unprintable: RuntimeError>"


def test_error_types_are_dotted_unless_builtin() -> None:
    assert error_type(ValueError("x")) == "ValueError"
    down = type("Down", (Exception,), {"__module__": "billing"})
    assert error_type(down()) == "billing.Down"


def test_an_error_without_text_is_named_by_its_class() -> None:
    assert error_message(KeyError(), 100) == "KeyError"
    assert error_message(RuntimeError("x" * 50), 20).startswith("x")
    assert len(error_message(RuntimeError("x" * 50), 20)) == 20
