"""Failure hooks: Django signals sent by the dispatcher after the run's history row is written.

Every signal is sent with ``sender=ScheduledTask`` and the keyword arguments ``run`` (the
:class:`~orchestrator.models.TaskRun` just written) and ``scheduled_task``. Receivers are called
with ``send_robust``: a receiver that raises is logged and never changes the task's outcome.

* ``task_succeeded``: an attempt succeeded.
* ``task_retrying``: an attempt failed and a retry is scheduled (``run.next_retry_at``).
* ``task_failed``: final failure (retries exhausted, or the error is not retryable).
* ``task_recovered``: the first success after a final failure (sent after ``task_succeeded``).
* ``task_skipped``: a run was not called: its task or definition is disabled, the task is
  paused, or (``overlap="skip"``) another run of it is still running.
* ``task_paused``: the circuit breaker paused the task (``pause_after_failures`` final
  failures in a row); ``run`` is the failure that tripped it.
* ``task_missed``: ticks of the task had no run within their grace period; ``run`` is the
  ``missed`` row that records them (sent once per row, not again when later ticks extend it).
"""

from django.dispatch import Signal

task_succeeded = Signal()
task_retrying = Signal()
task_failed = Signal()
task_recovered = Signal()
task_skipped = Signal()
task_paused = Signal()
task_missed = Signal()
