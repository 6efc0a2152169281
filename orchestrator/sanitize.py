"""Make what a task returned or raised fit for the database: bounded, valid text and JSON.

Pure functions of their arguments (the limits are passed in), shared by the dispatcher, the
maintenance pass and the pages that show stored text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

_TRUNCATION_MARK = "… [{count} characters cut]"
# Argument names whose values are secrets: "token", "api_key", "password", "client_secret"...
SECRET_NAME = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|api[_-]?key|private[_-]?key|credential|auth|key$)",
    re.IGNORECASE,
)
SECRET_MASK = "********"


def truncate(text: str, limit: int, *, keep: str = "head") -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was cut.

    ``keep="tail"`` keeps the end instead (for tracebacks, whose last lines name the error).
    NUL characters are replaced and unpaired surrogates (undecodable bytes read with
    ``surrogateescape``) written as ``\\udcff`` escapes: PostgreSQL text columns refuse the first,
    and UTF-8 cannot encode the second.
    """
    text = text.replace("\x00", "\ufffd").encode("utf-8", "backslashreplace").decode("utf-8")
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    # The mark counts towards the limit, and its own length depends on the count it shows:
    # grow the count until it is exact (a step or two).
    cut = len(text) - limit
    while True:
        mark = _TRUNCATION_MARK.format(count=cut)
        room = limit - len(mark)
        exact = len(text) - max(room, 0)
        if exact == cut or room <= 0:
            break
        cut = exact
    if room <= 0:
        return text[:limit] if keep == "head" else text[-limit:]
    if keep == "tail":
        return mark + text[-room:]
    return text[:room] + mark


def json_safe_result(value: Any, limit: int) -> Any:
    """``value`` as something a JSONField stores, within ``limit`` characters of JSON.

    JSON-able values are normalised through Django's encoder (dates, decimals and UUIDs become
    strings, tuples lists). Anything else is stored as its ``repr``. When the JSON text is longer
    than ``limit``, the stored value is that text truncated, as a string.
    """
    if value is None:
        return None  # the most common result, stored without a JSON round trip
    try:
        # allow_nan=False: PostgreSQL's jsonb refuses NaN and Infinity.
        # ensure_ascii=False leaves unpaired surrogates raw, for _is_utf8() to find: jsonb refuses
        # their escapes as it refuses \u0000.
        text = json.dumps(value, cls=DjangoJSONEncoder, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is None or "\\u0000" in text or not _is_utf8(text):
        return truncate(safe_repr(value), limit)
    if len(text) > limit:
        return truncate(text, limit)
    return json.loads(text)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_repr(value: Any) -> str:
    """``repr(value)``, or a placeholder naming its type when its ``__repr__`` raises."""
    try:
        return repr(value)
    except Exception as err:  # a broken __repr__ must not lose the run's outcome
        return f"<unrepresentable {type(value).__name__}: {type(err).__name__}>"


def error_type(exc: BaseException) -> str:
    """The exception's class, dotted unless it is a builtin (``ValueError``, ``billing.Down``)."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return name[:255]


def error_message(exc: BaseException, limit: int) -> str:
    """``str(exc)`` within ``limit`` characters; the class name when it says nothing."""
    try:
        message = str(exc)
    except Exception:
        message = ""
    return truncate(message or type(exc).__name__, limit)


def looks_secret(name: str) -> bool:
    """Whether an argument called ``name`` most likely holds a secret."""
    return bool(SECRET_NAME.search(name))


def mask_secret_values(value: Any, _depth: int = 0) -> Any:
    """``value`` with the values of keys that look secret (at any depth) masked.

    Past 64 levels of nesting (only a row written around validation gets there) the rest is
    masked whole rather than walked.
    """
    if _depth > 64:
        return SECRET_MASK
    if isinstance(value, dict):
        return {
            key: SECRET_MASK
            if isinstance(key, str) and looks_secret(key)
            else mask_secret_values(item, _depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask_secret_values(item, _depth + 1) for item in value]
    return value


class UnreadableJSON:
    """A JSON column's stored text that cannot be decoded (nested past the recursion limit).

    Only a value written around validation (raw SQL) gets here. It stands in for the value so
    that the row still loads: pages say it cannot be shown, validation refuses it, the
    dispatcher records a failed run, and saving the row unchanged writes the same text back.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<JSON nested too deeply to read, {len(self.text)} characters>"

    # Code that looks for a value in a JSON list (``event in channel.events``) finds nothing
    # rather than failing; it stays truthy, so ``value or default`` does not mistake it for
    # an empty value that could be written back.
    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __contains__(self, item: object) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnreadableJSON) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def json_preview(value: Any, limit: int, *, indent: int | None = None) -> str:
    """``value`` as JSON text (keys sorted) within ``limit`` characters, for a page to show.

    A value that cannot be encoded (unreadable in the database, nested past the recursion
    limit, not JSON) is described instead: a page must never fail on a stored value.
    """
    if isinstance(value, UnreadableJSON):
        return "(nested too deeply to show)"
    try:
        text = json.dumps(value, sort_keys=True, indent=indent, cls=DjangoJSONEncoder)
    except (TypeError, ValueError, RecursionError):
        return truncate(f"(cannot be shown as JSON: {safe_repr(value)})", limit)
    return truncate(text, limit)
