"""Operator controls through a real Celery worker, Redis (or RabbitMQ) and PostgreSQL.

Exception rules, overlap, the circuit breaker with its alert, pauses with their automatic end,
runs with their own arguments, and cancelling a queued run, a running run and a waiting retry.
Each test drives the worker only through the broker, as beat, the admin and the API do.
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest
from django.utils import timezone

import tests.celery_app  # noqa: F401  (makes the test project's app current for sending)
from orchestrator import history
from orchestrator.dispatcher import enqueue, message_kwargs
from orchestrator.models import NotificationDelivery, ScheduledTask, TaskRun
from orchestrator.tasks import run_maintenance, run_scheduled_task
from tests.integration.conftest import wait_until
from tests.utils import make_channel, make_scheduled_task, make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

NOTIFICATIONS = "notifications"


def runs_of(task: ScheduledTask, count: int, *, done: bool = True) -> list[TaskRun] | None:
    """The task's runs, oldest first, once there are ``count`` and (``done``) none is still
    queued or running."""
    runs = list(TaskRun.objects.filter(scheduled_task=task).order_by("started_at", "id"))
    pending = {TaskRun.Status.RUNNING, TaskRun.Status.QUEUED}
    if len(runs) >= count and not (done and any(r.status in pending for r in runs)):
        return runs
    return None


def lines(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_a_never_retry_on_error_ends_at_once_while_another_follows_the_backoff(
    start_worker,
) -> None:
    strict = make_scheduled_task(
        "strict",
        "tests.sample_tasks.raises",
        kwargs={"kind": "ValueError"},
        max_retries=3,
        retry_backoff="fixed",
        retry_delay=1,
        never_retry_on=["ValueError"],
    )
    patient = make_scheduled_task(
        "patient",
        "tests.sample_tasks.raises",
        kwargs={"kind": "ConnectionError"},
        max_retries=2,
        retry_backoff="fixed",
        retry_delay=1,
        never_retry_on=["ValueError"],
    )
    start_worker(concurrency=2)

    enqueue(strict)
    enqueue(patient)
    retried = wait_until(lambda: runs_of(patient, 3), timeout=60)
    # The strict task's single attempt finished long before the patient one's third.
    (only,) = runs_of(strict, 1) or []

    assert (only.status, only.note) == (
        "failed",
        "not retried: ValueError matches never_retry_on (ValueError)",
    )
    assert [(r.attempt, r.status) for r in retried] == [
        (1, "retried"),
        (2, "retried"),
        (3, "failed"),
    ]
    assert retried[-1].note == ""  # retries exhausted: no rule decided it
    assert all(
        (later.started_at - earlier.finished_at).total_seconds() >= 0.9
        for earlier, later in itertools.pairwise(retried)
    )


def test_two_overlapping_runs_of_a_skip_task_call_the_function_once(
    start_worker, scratch_dir: Path
) -> None:
    log = scratch_dir / "calls.log"
    task = make_scheduled_task(
        "single",
        "tests.sample_tasks.record_and_wait",
        kwargs={"log_file": str(log), "label": "ran", "seconds": 3},
        overlap="skip",
    )
    start_worker(concurrency=2)

    enqueue(task)
    enqueue(task)
    runs = wait_until(lambda: runs_of(task, 2), timeout=60)

    assert lines(log) == ["ran"]
    assert sorted(r.status for r in runs) == ["skipped", "succeeded"]
    skipped = next(r for r in runs if r.status == "skipped")
    running = next(r for r in runs if r.status == "succeeded")
    assert f"run {running.pk} (attempt 1, started" in skipped.error_message


def test_the_circuit_breaker_pauses_the_task_with_one_alert_and_a_system_history_entry(
    start_worker, smtp_server
) -> None:
    make_channel("ops", kind="email", target="ops@example.com", is_default=True)
    task = make_scheduled_task(
        "breaker", "tests.sample_tasks.always_fails", max_retries=0, pause_after_failures=2
    )
    start_worker(
        queues=["celery", NOTIFICATIONS],
        concurrency=1,
        DJANGO_SETTINGS_MODULE="tests.support.worker_settings",
        ORCHESTRATOR_NOTIFICATION_QUEUE=NOTIFICATIONS,
        **smtp_server.env(),
    )

    for count in (1, 2):
        enqueue(task)
        wait_until(lambda n=count: runs_of(task, n), timeout=30)
    # The breaker trips once the second failure is recorded and alerted.
    wait_until(lambda: ScheduledTask.objects.get(pk=task.pk).paused, timeout=30)
    task.refresh_from_db()
    assert task.pause_reason == "paused after 2 consecutive failures"

    # Ticks of the paused task are skipped: no call, no alert.
    enqueue(task)
    runs = wait_until(lambda: runs_of(task, 3), timeout=30)
    assert [r.status for r in runs] == ["failed", "failed", "skipped"]
    assert runs[-1].error_message == "paused: paused after 2 consecutive failures"

    paused_alerts = wait_until(
        lambda: list(NotificationDelivery.objects.filter(event="paused", status="sent")),
        timeout=30,
    )
    assert len(paused_alerts) == 1
    def paused_mails() -> list[str]:
        subjects = [str(m.message["Subject"]) for m in smtp_server.messages]
        return [s for s in subjects if s.startswith("[orchestrator] PAUSED: breaker")]

    wait_until(paused_mails, timeout=30)
    assert len(paused_mails()) == 1
    assert NotificationDelivery.objects.filter(event="failure", status="sent").count() == 1
    entry = history.describe(history.entries_for(task).first())
    assert (entry["changed_by"], entry["source"]) == ("system", "system")
    assert entry["changes"]["paused"] == ["False", "True"]


def test_a_paused_tasks_ticks_are_skipped_without_alerts_until_it_resumes_by_itself(
    start_worker, scratch_dir: Path
) -> None:
    log = scratch_dir / "calls.log"
    make_channel("ops", kind="email", target="ops@example.com", is_default=True)
    task = make_scheduled_task(
        "nightly",
        "tests.sample_tasks.record",
        kwargs={"log_file": str(log), "label": "ran"},
        cron="* * * * *",
    )
    start_worker()
    # Long enough for both ticks to be handled on a busy machine, short enough to wait for.
    task.pause("database upgrade", until=timezone.now() + dt.timedelta(seconds=12))

    def send_tick(minutes_ago: int) -> None:
        tick = (timezone.now() - dt.timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
        run_scheduled_task.apply_async(args=[task.pk], kwargs=message_kwargs("schedule", tick))

    send_tick(2)
    send_tick(1)
    skipped = wait_until(lambda: runs_of(task, 2), timeout=30)
    assert {(r.status, r.error_message) for r in skipped} == {
        ("skipped", "paused: database upgrade")
    }
    assert lines(log) == []

    wait_until(lambda: timezone.now() > task.paused_until, timeout=30)
    run_maintenance.apply_async()  # the pass that records the end of the pause
    wait_until(lambda: not ScheduledTask.objects.get(pk=task.pk).paused, timeout=30)
    send_tick(0)
    runs = wait_until(lambda: runs_of(task, 3), timeout=30)

    assert runs[-1].status == "succeeded" and lines(log) == ["ran"]
    assert not NotificationDelivery.objects.exists()
    entry = history.describe(history.entries_for(task).first())
    assert (entry["source"], entry["changes"]["paused"]) == ("system", ["True", "False"])


def test_a_run_with_its_own_arguments_reaches_the_function_and_is_recorded(
    start_worker, scratch_dir: Path
) -> None:
    log = scratch_dir / "calls.log"
    task = make_scheduled_task(
        "record", "tests.sample_tasks.record", kwargs={"log_file": str(log), "label": "usual"}
    )
    operator = make_user("operator")
    start_worker()

    task.run_now(kwargs={"log_file": str(log), "label": "special"}, user=operator)
    (run,) = wait_until(lambda: runs_of(task, 1), timeout=30)

    assert lines(log) == ["special"]
    assert (run.status, run.trigger, run.result) == ("succeeded", "manual", "special")
    assert run.kwargs_override == {"log_file": str(log), "label": "special"}
    assert run.triggered_by == operator
    task.refresh_from_db()
    assert task.kwargs["label"] == "usual"  # the task's own arguments are unchanged


def test_cancelling_a_queued_run_and_a_running_run(start_worker, scratch_dir: Path) -> None:
    log = scratch_dir / "calls.log"

    def recorder(name: str, seconds: float) -> ScheduledTask:
        return make_scheduled_task(
            name,
            "tests.sample_tasks.record_and_wait",
            kwargs={"log_file": str(log), "label": name, "seconds": seconds},
        )

    long_one, queued_one, after = recorder("long", 60), recorder("queued", 0), recorder("after", 0)
    operator = make_user("operator")
    start_worker(concurrency=1)

    long_one.run_now()
    wait_until(lambda: "long" in lines(log), timeout=30)
    queued_one.run_now()
    (waiting,) = wait_until(lambda: runs_of(queued_one, 1, done=False), timeout=10)
    assert waiting.status == "queued"

    assert waiting.cancel(user=operator)
    (running,) = runs_of(long_one, 1, done=False) or []
    assert running.status == "running"
    assert running.cancel(user=operator)  # prefork: the pool process is terminated

    after.run_now()
    wait_until(lambda: runs_of(after, 1), timeout=30)
    assert lines(log) == ["long", "after"]  # the queued run never started
    running.refresh_from_db()
    waiting.refresh_from_db()
    assert (running.status, running.note) == ("cancelled", "cancelled by operator")
    assert running.duration is not None and running.duration.total_seconds() < 60
    assert (waiting.status, waiting.cancelled_by) == ("cancelled", operator)
    # The terminated message is not delivered again.
    assert TaskRun.objects.filter(scheduled_task=long_one).count() == 1


def test_cancelling_a_retry_waiting_in_the_broker_or_in_the_database_drops_it(
    start_worker, scratch_dir: Path
) -> None:
    in_broker = make_scheduled_task(
        "broker-retry",
        "tests.sample_tasks.always_fails",
        max_retries=1,
        retry_backoff="fixed",
        retry_delay=3,
    )
    in_database = make_scheduled_task(
        "held-retry",
        "tests.sample_tasks.always_fails",
        max_retries=1,
        retry_backoff="fixed",
        retry_delay=6,
    )
    # Retries due later than 4 s are held in the database for the maintenance pass.
    start_worker(concurrency=2, ORCHESTRATOR_MAX_BROKER_COUNTDOWN="4")

    enqueue(in_broker)
    enqueue(in_database)
    (broker_run,) = wait_until(lambda: runs_of(in_broker, 1), timeout=30)
    (held_run,) = wait_until(lambda: runs_of(in_database, 1), timeout=30)
    assert broker_run.status == held_run.status == "retried"
    assert broker_run.cancel() and held_run.cancel()

    # Past both retries' due times, with a maintenance pass that would send the held one.
    wait_until(lambda: timezone.now() > held_run.next_retry_at, timeout=15)
    run_maintenance.apply_async()
    settled = held_run.next_retry_at + dt.timedelta(seconds=3)
    wait_until(lambda: timezone.now() > settled, timeout=10)
    assert TaskRun.objects.filter(scheduled_task__in=[in_broker, in_database]).count() == 2
    for run in (broker_run, held_run):
        run.refresh_from_db()
        assert (run.status, run.note) == ("cancelled", "retry dropped: cancelled by the system")
