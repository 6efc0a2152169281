"""Resolve a TaskDefinition's import path to a callable, inside the allow-list only.

The same function serves validation (admin, API, commands) and the dispatcher at run time, so a
row edited straight in the database is held to the same rule as one saved through a form.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

# A task function may carry a check of its argument values (see :func:`checks_kwargs`).
KWARGS_CHECK_ATTRIBUTE = "orchestrator_check_kwargs"

_F = TypeVar("_F", bound=Callable[..., Any])

_DOTTED_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class CallableError(Exception):
    """The import path cannot be used; the message says why and what to do."""


class NotAllowedError(CallableError):
    """The import path is outside ``ORCHESTRATOR["ALLOWED_TASK_MODULES"]``."""


def _within(module_name: str, prefixes: Iterable[str]) -> bool:
    return any(
        module_name == prefix or module_name.startswith(prefix + ".")
        for prefix in (p.strip().rstrip(".") for p in prefixes)
        if prefix
    )


def check_allowed(import_path: str, allowed_modules: Iterable[str]) -> tuple[str, str]:
    """Check the shape of ``import_path`` and that its module is allowed.

    Return ``(module_name, attribute)``. Nothing is imported.
    """
    allowed = tuple(allowed_modules)
    # fullmatch: with match(), the pattern's $ would accept a trailing newline.
    if not isinstance(import_path, str) or not _DOTTED_PATH.fullmatch(import_path):
        raise CallableError(
            f"{import_path!r} is not a dotted import path. "
            "Use the form 'package.module.function', such as 'myapp.tasks.send_report'."
        )
    if any(part.startswith("__") for part in import_path.split(".")):
        raise NotAllowedError(f"{import_path!r} names a private or special attribute.")
    module_name, attribute = import_path.rsplit(".", 1)
    if not allowed:
        raise NotAllowedError(
            'ORCHESTRATOR["ALLOWED_TASK_MODULES"] is empty, so no callable may be used. '
            "Add the module prefixes of your task functions to that setting."
        )
    if not _within(module_name, allowed):
        raise NotAllowedError(
            f"Module {module_name!r} is not allowed. Allowed module prefixes: "
            f"{', '.join(allowed)} (ORCHESTRATOR['ALLOWED_TASK_MODULES'])."
        )
    return module_name, attribute


def resolve(import_path: str, allowed_modules: Iterable[str]) -> Callable[..., Any]:
    """Import and return the callable named by ``import_path``, if the allow-list permits it.

    Only module-level attributes are reachable (no ``module.Class.method`` chains), and the
    callable must be *defined* in an allowed module: a function an allowed module merely
    re-exports (``from os import system``) is refused.
    """
    allowed = tuple(allowed_modules)
    module_name, attribute = check_allowed(import_path, allowed)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CallableError(f"Module {module_name!r} cannot be imported: {err}.") from None
    except Exception as err:
        raise CallableError(
            f"Importing module {module_name!r} failed with {type(err).__name__}: {err}."
        ) from None
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise CallableError(f"Module {module_name!r} has no attribute {attribute!r}.") from None
    if inspect.ismodule(target) or not callable(target):
        raise CallableError(f"{import_path!r} is not callable; name a function.")
    defined_in = getattr(target, "__module__", None)
    if not isinstance(defined_in, str) or not _within(defined_in, allowed):
        raise NotAllowedError(
            f"{import_path!r} is defined in {defined_in!r}, which is not an allowed module; "
            "only callables defined in an allowed module may run."
        )
    return target


@functools.lru_cache(maxsize=1024)
def _parameters(func: Callable[..., Any]) -> tuple[inspect.Parameter, ...] | None:
    # inspect.signature() is slow, and the dispatcher checks every run's kwargs: a function's
    # signature does not change while the process runs.
    try:
        return tuple(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None  # some builtins have no signature


def check_kwargs(func: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Raise CallableError when ``func(**kwargs)`` would fail for its signature."""
    try:
        parameters = _parameters(func)
    except TypeError:  # an unhashable callable: inspect it every time
        parameters = _parameters.__wrapped__(func)
    if parameters is None:
        return  # nothing to check against
    takes_var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    named = {
        p.name: p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    # str(): names typed in a shell may be of any type, and sorting mixed types fails.
    unknown = sorted(str(name) for name in set(kwargs) - set(named))
    if unknown and not takes_var_kwargs:
        raise CallableError(
            f"Unknown argument(s) {', '.join(unknown)}; the function accepts: "
            f"{', '.join(named) or 'no arguments'}."
        )
    missing = sorted(
        name
        for name, p in named.items()
        if p.default is inspect.Parameter.empty and name not in kwargs
    )
    if missing:
        raise CallableError(f"Missing required argument(s): {', '.join(missing)}.")
    positional_only = [
        p.name
        for p in parameters
        if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is inspect.Parameter.empty
    ]
    if positional_only:
        raise CallableError(
            f"The function needs positional-only argument(s) {', '.join(positional_only)}, "
            "which keyword arguments cannot fill."
        )
    check = getattr(func, KWARGS_CHECK_ATTRIBUTE, None)
    if check is not None:
        try:
            check(kwargs)
        except (ValueError, TypeError) as err:
            raise CallableError(str(err)) from None


def checks_kwargs(check: Callable[[Mapping[str, Any]], None]) -> Callable[[_F], _F]:
    """Decorate a task function with a check of its argument values.

    :func:`check_kwargs` calls ``check(kwargs)`` after the signature check, so the values are
    checked wherever the names are: when a scheduled task is saved (admin, API, commands), when
    a run is sent with arguments of its own, and by the dispatcher before each run. ``check``
    raises ValueError (or TypeError) with a message that names the argument and the fix; it
    must be quick, and must not touch the database or the network.
    """

    def decorate(func: _F) -> _F:
        setattr(func, KWARGS_CHECK_ATTRIBUTE, check)
        return func

    return decorate
