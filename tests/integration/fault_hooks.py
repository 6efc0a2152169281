"""Worker-side hooks of the fault tests, loaded with ``celery worker --include``.

The window the fault tests aim at is after an attempt's outcome is written and before the
broker hears of it: the message is acknowledged (``acks_late``) only once the pool process hands
the task's return value back. No task function can stand in that window, because the outcome
is written after the function returns; a receiver of ``task_succeeded`` (sent once the row is
written) can.

With ``ORCHESTRATOR_TEST_PAUSE_AFTER_SUCCESS`` set to a file path, the pool process writes
``"<its pid> <run id>"`` there once a success is recorded, then waits to be killed. Workers
started without it behave as usual.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from orchestrator import signals

PAUSE_ENV = "ORCHESTRATOR_TEST_PAUSE_AFTER_SUCCESS"


def pause_before_the_ack(sender: Any, run: Any, scheduled_task: Any, **kwargs: Any) -> None:
    marker = os.environ.get(PAUSE_ENV)
    if not marker:
        return
    # Written whole under another name, then renamed: the test never reads half a line.
    partial = Path(f"{marker}.partial")
    partial.write_text(f"{os.getpid()} {run.pk}")
    partial.rename(marker)
    time.sleep(300)  # the test kills this process well before; the limit only bounds a failure


signals.task_succeeded.connect(pause_before_the_ack, dispatch_uid="fault-tests-pause")
