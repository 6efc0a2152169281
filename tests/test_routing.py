"""Routing fields turned into Celery message options for the broker in use."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from orchestrator.routing import message_options, native_priority, send_task_message
from tests.utils import make_scheduled_task

pytestmark = pytest.mark.django_db


def test_a_task_without_priority_gets_the_projects_default_priority(settings) -> None:
    from celery import current_app

    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": "redis"}
    task = make_scheduled_task("plain")
    urgent = make_scheduled_task("urgent", priority=9)
    saved = current_app.conf.task_default_priority
    current_app.conf.task_default_priority = 5
    try:
        assert message_options(task)["priority"] == 5
        assert message_options(urgent)["priority"] == 0  # Redis: 0 is most urgent
    finally:
        current_app.conf.task_default_priority = saved


def test_a_retry_expires_counting_from_when_it_is_due() -> None:
    task = make_scheduled_task(expires=30)
    assert message_options(task, countdown=120)["expires"] == 150


@pytest.mark.parametrize(
    ("transport", "priority", "native"),
    [("redis", 9, 0), ("redis", 0, 9), ("amqp", 9, 9), ("redis", None, None)],
)
def test_priorities_are_turned_to_the_brokers_direction(
    settings: Any, transport: str, priority: int | None, native: int | None
) -> None:
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": transport}
    assert native_priority(priority) == native


def test_a_registered_task_is_sent_through_its_own_apply_async() -> None:
    from orchestrator.tasks import run_scheduled_task

    with mock.patch.object(run_scheduled_task, "apply_async") as apply_async:
        send_task_message("orchestrator.run_scheduled_task", args=[1], queue="q")
    apply_async.assert_called_once_with(args=[1], queue="q")


def test_an_unregistered_task_is_sent_by_name() -> None:
    from celery import current_app

    with mock.patch.object(current_app, "send_task") as send_task:
        send_task_message("somewhere.else", args=[1])
    send_task.assert_called_once_with("somewhere.else", args=[1])
