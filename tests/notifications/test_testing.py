"""The shipped test channel kind: alerts land in an in-memory outbox."""

from __future__ import annotations

import pytest

from orchestrator.dispatcher import Attempt, run_task
from orchestrator.models import NotificationDelivery
from orchestrator.notifications import delivery, testing
from orchestrator.notifications.testing import TestChannel
from tests.notifications.conftest import failure_alert
from tests.utils import make_channel, make_scheduled_task

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def test_kind(settings):
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "CHANNEL_KINDS": {"test": "orchestrator.notifications.testing.TestChannel"},
    }
    testing.outbox.clear()
    yield
    testing.outbox.clear()


def test_a_projects_failing_task_lands_in_the_outbox(django_capture_on_commit_callbacks):
    from celery import current_app

    make_channel("ops", kind="test", target="ops", is_default=True)
    task = make_scheduled_task("billing", "tests.sample_tasks.always_fails", max_retries=0)
    current_app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            run_task(Attempt(task.pk))
    finally:
        current_app.conf.task_always_eager = False

    assert [(m.target, m.message.event) for m in testing.outbox] == [("ops", "failure")]
    assert testing.outbox[0].text.startswith("FAILED: billing (attempt 1/1)")
    assert NotificationDelivery.objects.get().status == "sent"


def test_a_failing_target_fails_the_way_it_says():
    result = delivery.send_with_retries(
        TestChannel(testing.FAIL_PERMANENT), failure_alert(), sleep=lambda s: None
    )
    assert result.error is not None and result.error.permanent and result.attempts == 1
    result = delivery.send_with_retries(
        TestChannel(testing.FAIL_TRANSIENT), failure_alert(), sleep=lambda s: None
    )
    assert result.error is not None and not result.error.permanent and result.attempts == 5
    assert testing.outbox == []


def test_the_kind_is_offered_once_enabled_and_its_target_is_a_label():
    channel = make_channel("qa", kind="test", target="qa")
    assert channel.get_kind_display() == "Test (in-memory outbox)"
    with pytest.raises(Exception, match="label"):
        make_channel("empty", kind="test", target=" ")
