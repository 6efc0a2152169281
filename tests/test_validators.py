"""Field validators shared by the models (and so the admin, the API and the shell)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from orchestrator.validators import (
    MAX_KWARGS_DEPTH,
    validate_cron,
    validate_import_path_shape,
    validate_kwargs_object,
    validate_queue_name,
    validate_storable_text,
    validate_timezone,
)


def message(validator: Any, value: Any) -> str:
    with pytest.raises(ValidationError) as info:
        validator(value)
    return " ".join(info.value.messages)


def test_import_paths_must_be_dotted_and_allowed() -> None:
    validate_import_path_shape("tests.sample_tasks.noop")
    assert "not a dotted import path" in message(validate_import_path_shape, "noop")
    assert "is not allowed" in message(validate_import_path_shape, "os.system")


def test_cron_expressions_are_read_by_celerys_parser() -> None:
    validate_cron("*/15 * * * mon-fri")
    assert message(validate_cron, "61 * * * *")


def test_time_zones_are_iana_names() -> None:
    validate_timezone("Europe/Paris")
    assert "Europe/Pariss" in message(validate_timezone, "Europe/Pariss")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([1, 2], "got a JSON list"),
        ({"a": "nul\x00"}, "NUL character"),
        ({"a": "\udcff"}, "unpaired surrogate"),
        ({1: "x"}, "Argument names must be text"),
    ],
)
def test_kwargs_must_be_a_storable_json_object(value: Any, fragment: str) -> None:
    assert fragment in message(validate_kwargs_object, value)


def test_kwargs_nested_too_deeply_are_refused_without_recursing() -> None:
    value: Any = "leaf"
    for _ in range(MAX_KWARGS_DEPTH + 1):
        value = {"k": value}
    assert f"more than {MAX_KWARGS_DEPTH} levels" in message(validate_kwargs_object, value)
    deep_but_fine: Any = "leaf"
    for _ in range(MAX_KWARGS_DEPTH - 1):
        deep_but_fine = {"k": deep_but_fine}
    validate_kwargs_object(deep_but_fine)


def test_text_must_be_storable() -> None:
    validate_storable_text("plain")
    assert "NUL character" in message(validate_storable_text, "a\x00b")


def test_queue_names_are_letters_digits_and_separators() -> None:
    validate_queue_name("billing.high:1")
    validate_queue_name("")
    assert "only letters" in message(validate_queue_name, "bad queue")
