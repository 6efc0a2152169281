"""The change history: who changed what, from where, with secrets masked."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from orchestrator import history, operations
from orchestrator.models import NotificationChannel, ScheduledTask
from tests.utils import make_channel, make_scheduled_task, make_staff_user

pytestmark = pytest.mark.django_db


def entries(obj: Any) -> list[dict[str, Any]]:
    return [history.describe(entry) for entry in history.entries_for(obj)]


def test_a_change_in_a_shell_is_recorded_as_the_shells() -> None:
    task = make_scheduled_task("a")
    task.max_retries = 7
    task.save()
    latest, created = entries(task)
    assert (created["action"], latest["action"]) == ("create", "update")
    assert (latest["changed_by"], latest["source"]) == ("", "shell")
    assert latest["changes"]["max_retries"] == ["3", "7"]
    assert latest["changes"]["version"] == ["1", "2"]
    assert "updated_at" not in latest["changes"]


def test_an_admin_edit_is_recorded_with_the_user_and_the_fields(admin_client: Any) -> None:
    from tests.test_admin import change_form_data, task_form_data

    admin_client.post(reverse("admin:orchestrator_scheduledtask_add"), task_form_data())
    task = ScheduledTask.objects.get()
    change_url = reverse("admin:orchestrator_scheduledtask_change", args=[task.pk])
    data = change_form_data(admin_client.get(change_url))
    data.update(max_retries="5", retry_on="ConnectionError, requests.Timeout")
    assert admin_client.post(change_url, data).status_code == 302
    latest = entries(task)[0]
    assert (latest["changed_by"], latest["source"]) == ("admin", "admin")
    assert latest["changes"]["max_retries"] == ["3", "5"]
    assert latest["changes"]["retry_on"][1] == '["ConnectionError", "requests.Timeout"]'
    history_page = admin_client.get(
        reverse("admin:orchestrator_scheduledtask_history", args=[task.pk])
    )
    assert history_page.status_code == 200
    assert "max retries" in history_page.content.decode().lower()


def test_a_bulk_disable_is_recorded_per_task() -> None:
    task = make_scheduled_task("a")
    user = make_staff_user("ops")
    with history.changes_by(user, history.Source.ADMIN):
        operations.set_enabled([task.pk], False)
    latest = entries(task)[0]
    assert latest["changes"]["enabled"] == ["True", "False"]
    assert (latest["changed_by"], latest["source"]) == ("ops", "admin")


def test_secrets_are_masked_in_the_history() -> None:
    channel = make_channel(
        "hook", kind="slack", target="https://hooks.slack.com/services/T0/B0/s3cr3tW3bh00k"
    )
    task = make_scheduled_task(
        "billing", "tests.sample_tasks.echo", kwargs={"api_token": "hunter2hunter2", "days": 7}
    )
    text = str(entries(channel)) + str(entries(task))
    assert "s3cr3tW3bh00k" not in text and "hunter2hunter2" not in text
    assert "https://hooks.slack.com/…h00k" in text
    assert '"days": 7' in text


def test_deleting_a_channel_is_recorded() -> None:
    channel = make_channel("old")
    channel_id = channel.pk
    channel.delete()
    from auditlog.models import LogEntry

    deleted = LogEntry.objects.filter(object_id=channel_id, action=LogEntry.Action.DELETE)
    assert deleted.exists()
    assert NotificationChannel.objects.count() == 0
