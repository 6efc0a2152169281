"""Functions that the tests' scheduled tasks run (this module is on the allow-list)."""

from __future__ import annotations

import os
import time
from os import system  # noqa: F401  (re-exported on purpose: the allow-list must refuse it)
from os.path import join  # noqa: F401  (same: a module attribute of os.path, re-exported)
from pathlib import Path
from typing import Any


def noop() -> None:
    return None


def add(a: int, b: int = 0) -> int:
    return a + b


def echo(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def always_fails(message: str = "boom") -> None:
    raise RuntimeError(message)


def flaky(counter_file: str, failures: int = 2) -> str:
    """Fail ``failures`` times, counted in ``counter_file`` across processes, then pass."""
    path = Path(counter_file)
    calls = int(path.read_text() or 0) + 1 if path.exists() else 1
    path.write_text(str(calls))
    if calls <= failures:
        raise ConnectionError(f"flaky failure {calls} of {failures}")
    return f"succeeded after {calls} calls"


def record(log_file: str, label: str, seconds: float = 0.0) -> str:
    """Append ``label`` to ``log_file`` (to observe execution order), then sleep."""
    with open(log_file, "a") as handle:
        handle.write(label + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    if seconds:
        time.sleep(seconds)
    return label


def sleep(seconds: float = 1.0) -> float:
    time.sleep(seconds)
    return seconds


not_callable = 42


def hang_once(counter_file: str, pid_file: str, seconds: float = 30.0) -> str:
    """Hang on the first call, after writing its process id to ``pid_file``; later ones return."""
    path = Path(counter_file)
    calls = int(path.read_text() or 0) + 1 if path.exists() else 1
    path.write_text(str(calls))
    if calls == 1:
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(seconds)
    return f"call {calls}"


def raises(kind: str = "ValueError", message: str = "bad input") -> None:
    """Raise the builtin exception class named ``kind`` (exception rules are tested with it)."""
    raise getattr(__import__("builtins"), kind)(message)


def record_and_wait(log_file: str, label: str, seconds: float = 5.0) -> str:
    """Append ``label`` to ``log_file``, then wait: a run that is still running when another
    arrives (overlap), or that is cancelled while it runs."""
    return record(log_file, label, seconds)


def leaks_secrets(message: str, api_token: str = "", password: str = "") -> None:
    """Fail with an error that quotes every secret it was given, as a careless task would."""
    raise RuntimeError(f"{message} (api_token={api_token}, password={password})")


def chatty(label: str = "job", lines: int = 3, fail: bool = False, token: str = "") -> int:
    """Log and print ``lines`` numbered lines each (the run log's tests read them back)."""
    import logging

    logger = logging.getLogger("tests.sample_tasks.chatty")
    for number in range(lines):
        logger.info("%s logged line %d", label, number)
        print(f"{label} printed line {number}")
    logger.debug("%s debug line", label)
    if token:
        logging.getLogger("tests.billing").warning("calling the API with token %s", token)
    if fail:
        raise RuntimeError(f"{label} failed after {lines} lines")
    return lines


def chatty_in_step(label: str, barrier_file: str, lines: int = 20) -> int:
    """Log and print, waiting for ``barrier_file`` to exist after the first line, so that two
    runs in one worker interleave (the run log's integration test)."""
    import logging

    logger = logging.getLogger("tests.sample_tasks.step")
    logger.info("%s started", label)
    deadline = time.monotonic() + 20
    Path(barrier_file + "." + label).write_text("ready")
    while not Path(barrier_file).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for number in range(lines):
        logger.info("%s line %d", label, number)
        print(f"{label} printed {number}")
        time.sleep(0.01)
    return lines
