"""Field validators shared by the models, and so by the admin, the API and the commands."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError

from orchestrator import callables, cron
from orchestrator.conf import conf

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")
_EXCEPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
MAX_EXCEPTION_RULES = 50
# Deeper keyword arguments are a mistake or an attack, and near Python's recursion limit they
# break json.dumps wherever they are saved or shown.
MAX_KWARGS_DEPTH = 32
# Every JSON value the edges accept (kwargs, event lists, exception names) is held to the same
# depth: none needs more, and a shallow value is one every page, log line and repr() can show.
MAX_JSON_DEPTH = MAX_KWARGS_DEPTH
# A stored value nested deeper than this (written around validation, by raw SQL) loads as
# unreadable. Python 3.11 cannot decode one near its recursion limit, 3.12 and newer can, and
# then json.dumps, repr() and templates fail on it: the same rule on every Python.
MAX_STORED_JSON_DEPTH = 100
# The widest integer every supported database stores (a signed 64-bit BIGINT). SQLite's driver
# raises OverflowError for a wider one: filter values are checked against it first.
MAX_DATABASE_INTEGER = 2**63 - 1
_WHOLE_NUMBER = re.compile(r"\s*[+-]?\d+\s*")


def fits_database_integer(text: str) -> bool:
    """Whether ``text``, if it is a whole number, is one every supported database can compare.

    Text that is not a whole number is not this function's business: it says True.
    """
    if not _WHOLE_NUMBER.fullmatch(text):
        return True
    return abs(int(text)) <= MAX_DATABASE_INTEGER


def parse_id(text: str) -> int:
    """``text`` as a row id (a whole number from 1 to ``MAX_DATABASE_INTEGER``); ValueError
    otherwise, including for numbers too large for the database."""
    if not _WHOLE_NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is not a whole number")
    value = int(text)
    if not 1 <= value <= MAX_DATABASE_INTEGER:
        raise ValueError(f"{value} is not between 1 and {MAX_DATABASE_INTEGER}")
    return value


def validate_import_path_shape(value: str) -> None:
    """A dotted path inside the allow-list (nothing is imported here)."""
    try:
        callables.check_allowed(value, conf.ALLOWED_TASK_MODULES)
    except callables.CallableError as err:
        raise ValidationError(str(err), code="import_path") from None


def validate_cron(value: str) -> None:
    try:
        cron.validate(value)
    except cron.CronError as err:
        raise ValidationError(str(err), code="cron") from None


def validate_timezone(value: str) -> None:
    try:
        cron.load_zone(value)
    except cron.CronError as err:
        raise ValidationError(str(err), code="timezone") from None


def validate_kwargs_object(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError(
            'Enter a JSON object of keyword arguments, such as {"days": 7}; '
            f"got a JSON {type(value).__name__}.",
            code="kwargs",
        )
    _validate_storable_json(value)


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` (decoded JSON) has lists or objects nested more than ``limit`` deep.

    Iterative, so it answers for values nested far past Python's recursion limit (a row written
    straight into the database), where ``json.dumps`` and ``repr`` raise RecursionError.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
    return False


def too_deep_message(limit: int = MAX_JSON_DEPTH) -> str:
    """What the edges say about JSON nested deeper than ``limit`` levels."""
    return f"This JSON is nested too deeply (more than {limit} levels); flatten it."


def _validate_storable_json(value: Any) -> None:
    """Refuse JSON that parses but cannot be stored or shown.

    PostgreSQL's jsonb refuses NUL characters and unpaired surrogates (a 500 on save otherwise),
    and nesting deep enough to reach Python's recursion limit breaks encoding it again. The walk
    is iterative for the same reason.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_KWARGS_DEPTH:
            raise ValidationError(
                f"Keyword arguments are nested too deeply (more than {MAX_KWARGS_DEPTH} "
                "levels); flatten them.",
                code="kwargs",
            )
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    # Only possible from Python (JSON keys are text); json.dumps would turn 1
                    # into "1" or fail on a tuple.
                    raise ValidationError(
                        f"Argument names must be text; {key!r} is a {type(key).__name__}.",
                        code="kwargs",
                    )
                _validate_storable_text(key, "the keyword arguments", "kwargs")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _validate_storable_text(item, "the keyword arguments", "kwargs")


def _validate_storable_text(text: str, where: str, code: str) -> None:
    if "\x00" in text:
        raise ValidationError(
            f"Remove the NUL character (\\u0000) from {where}: the database cannot store it.",
            code=code,
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"Remove the unpaired surrogate (a \\ud800-\\udfff escape) from {where}: "
            "it is not valid Unicode.",
            code=code,
        ) from None


def validate_storable_text(value: str) -> None:
    """Text the database can store: no NUL character, no unpaired surrogate."""
    if isinstance(value, str):
        _validate_storable_text(value, "this text", "text")


def validate_queue_name(value: str) -> None:
    if value and not _QUEUE_NAME.match(value):
        raise ValidationError(
            "A queue name may contain only letters, digits, '.', '_', ':' and '-'.",
            code="queue",
        )


def validate_exception_names(value: Any) -> None:
    """A list of exception class names, bare (``ConnectionError``) or dotted
    (``requests.exceptions.Timeout``). Nothing is imported: the class may live only in the
    workers."""
    example = 'such as ["ConnectionError", "requests.exceptions.Timeout"]'
    if not isinstance(value, list):
        raise ValidationError(
            f"Enter a JSON list of exception class names, {example}; "
            f"got a JSON {type(value).__name__}.",
            code="exception_names",
        )
    if len(value) > MAX_EXCEPTION_RULES:
        raise ValidationError(
            f"List at most {MAX_EXCEPTION_RULES} exception classes; name a common base class.",
            code="exception_names",
        )
    for name in value:
        if not isinstance(name, str) or not _EXCEPTION_NAME.fullmatch(name):
            raise ValidationError(
                f"{name!r} is not an exception class name; use names {example}.",
                code="exception_names",
            )
