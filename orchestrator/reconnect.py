"""Database writes that survive a dropped connection.

The run history is written again after the connection dropped (the server restarted, an
operator or a pooler terminated the backend): 5 tries, 0.5 s to 4 s apart, about 7.5 s in all.
Enough to ride out a restart of a few seconds; bounded, so a worker does not hang on a database
that is gone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection
from tenacity import (
    wait_exponential,
)

logger = logging.getLogger("orchestrator.dispatcher")

ATTEMPTS = 5
WAIT = wait_exponential(multiplier=0.5, min=0.5, max=4)
CONNECTION_ERRORS = (OperationalError, InterfaceError)
# Looked up at each call, so that tests can replace it.
sleep: Callable[[float], None] = time.sleep

_T = TypeVar("_T")


def with_reconnect(write: Callable[[], _T], *, what: str) -> _T:
    """``write()``, done again on a fresh connection if the database connection failed.

    Each failure is logged at ERROR with ``what`` (which task and attempt it was for); the last
    one is raised. Inside a transaction ``write`` runs once: the transaction belongs to the
    caller and went down with the connection, so writing again outside it would be wrong.
    A plain loop rather than tenacity's ``Retrying``: this runs three times per task run, and
    the common case (no failure) should cost one call.
    """
    if connection.in_atomic_block:
        return write()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return write()
        except CONNECTION_ERRORS as err:
            logger.error(
                "Database error while %s (try %s of %s): %s", what, attempt, ATTEMPTS, err
            )
            # Django opens a new connection on the next query once this one is closed; closing
            # a dead connection may itself fail, and changes nothing then.
            with contextlib.suppress(DatabaseError):
                connection.close()
            if attempt == ATTEMPTS:
                raise
            sleep(delay_before(attempt + 1))
    raise AssertionError("unreachable: the last attempt returns or raises")


def delay_before(attempt: int) -> float:
    """Seconds to wait before try ``attempt`` (2, 3, ...): 0.5, 1, 2, 4."""
    return float(WAIT(SimpleNamespace(attempt_number=attempt - 1)))  # type: ignore[arg-type]
