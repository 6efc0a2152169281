"""The receivers that connect the dispatcher's signals to the notification service."""

import weakref

import pytest

from orchestrator import signals
from orchestrator.dispatcher import Attempt, run_task
from orchestrator.models import NotificationDelivery, ScheduledTask
from orchestrator.notifications import delivery, receivers
from tests.utils import make_channel, make_run, make_scheduled_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(monkeypatch):
    from orchestrator.notifications.tasks import deliver_notification

    calls = []
    monkeypatch.setattr(deliver_notification, "apply_async", lambda **kw: calls.append(kw))
    return calls


def _receivers_of(signal) -> list:
    # Entries are (key, reference) on Django 4.2 and (key, reference, is_async) since 5.0.
    references = (entry[1] for entry in signal.receivers)
    return [r() if isinstance(r, weakref.ReferenceType) else r for r in references]


def test_each_signal_has_one_notification_receiver():
    # The recovery receiver used to be connected to task_succeeded too, running twice per
    # recovery: every event reaches the service once.
    assert _receivers_of(signals.task_retrying).count(receivers.on_retrying) == 1
    assert _receivers_of(signals.task_failed).count(receivers.on_failed) == 1
    assert _receivers_of(signals.task_recovered).count(receivers.on_recovered) == 1
    assert receivers.on_recovered not in _receivers_of(signals.task_succeeded)


def test_a_recovery_is_alerted_once_to_the_channel_that_was_paged(queued, monkeypatch):
    channel = make_channel("ops", is_default=True, cooldown=0)
    task = make_scheduled_task("flaky", "tests.sample_tasks.always_fails", max_retries=0)
    run_task(Attempt(task.pk))  # a final failure, alerted
    ScheduledTask.objects.filter(pk=task.pk).update(
        task_definition=make_scheduled_task("ok", "tests.sample_tasks.noop").task_definition
    )
    calls = []
    real = delivery.notify_run
    monkeypatch.setattr(delivery, "notify_run", lambda e, r: calls.append(e) or real(e, r))

    run_task(Attempt(task.pk))  # the first success after it

    assert calls == ["recovery"]
    events = NotificationDelivery.objects.filter(channel=channel).values_list("event", flat=True)
    assert sorted(events) == ["failure", "recovery"]


def test_a_success_after_a_success_reaches_no_notification_code(monkeypatch):
    task = make_scheduled_task("fine", "tests.sample_tasks.noop")
    make_run(task, status="succeeded")
    calls = []
    monkeypatch.setattr(delivery, "notify_run", lambda e, r: calls.append(e))
    run_task(Attempt(task.pk))
    assert calls == []


def test_a_broken_notification_path_never_raises_into_the_dispatcher(monkeypatch, caplog):
    def explode(event, run):
        raise RuntimeError("database is on fire")

    task = make_scheduled_task("fails", "tests.sample_tasks.always_fails")
    monkeypatch.setattr(delivery, "notify_run", explode)
    run = make_run(task, status="failed")
    receivers.on_failed(ScheduledTask, run=run, scheduled_task=task)  # no exception
    assert "Could not process failure notifications" in caplog.text


def test_a_signal_without_a_run_is_ignored(monkeypatch):
    calls = []
    monkeypatch.setattr(delivery, "notify_run", lambda e, r: calls.append(e))
    receivers.on_failed(ScheduledTask, run=None)
    assert calls == []
