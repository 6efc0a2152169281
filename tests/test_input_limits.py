"""Input that used to give a 500: JSON nested too deeply (sent, or written straight into the
database) and integer filters too large for the database. Each is refused on its field or
parameter, or shown, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from orchestrator import dispatcher
from orchestrator.models import NotificationChannel, ScheduledTask, TaskRun
from orchestrator.validators import MAX_JSON_DEPTH
from tests.utils import make_channel, make_definition, make_run, make_scheduled_task

pytestmark = pytest.mark.django_db

# Past Python's recursion limit: json.loads raises RecursionError, not a JSONDecodeError.
PAST_RECURSION_LIMIT = 100_000
# Decodes, but deeper than any of our JSON fields allows.
DEEP_BUT_DECODABLE = MAX_JSON_DEPTH + 20


def nested_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_object(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.fixture(autouse=True)
def redis_transport(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": "redis"}


def task_form(definition_id: int, **changes: Any) -> dict[str, Any]:
    return {
        "name": "deep",
        "task_definition": definition_id,
        "cron": "0 3 * * *",
        "timezone": "UTC",
        "kwargs": "{}",
        **changes,
    }


# --- sent by a client ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [PAST_RECURSION_LIMIT, DEEP_BUT_DECODABLE])
@pytest.mark.parametrize("field", ["kwargs", "retry_on", "never_retry_on"])
@pytest.mark.parametrize("encoding", ["form", "multipart"])
def test_deep_json_sent_as_form_data_is_a_400_naming_the_field(
    api: APIClient, field: str, depth: int, encoding: str
) -> None:
    definition = make_definition("noop", "tests.sample_tasks.noop")
    body = task_form(definition.pk, **{field: nested_list(depth)})
    url = reverse("orchestrator:api-scheduled-task-list")
    if encoding == "form":
        response = api.generic(
            "POST",
            url,
            "&".join(f"{k}={v}" for k, v in body.items()),
            "application/x-www-form-urlencoded",
        )
    else:
        response = api.post(url, body, format="multipart")
    assert response.status_code == 400, response.content[:300]
    assert "nested" in " ".join(response.json()[field])
    assert not ScheduledTask.objects.exists()


@pytest.mark.parametrize("depth", [PAST_RECURSION_LIMIT, DEEP_BUT_DECODABLE])
def test_deep_channel_events_sent_as_form_data_are_a_400_naming_the_field(
    api: APIClient, depth: int
) -> None:
    body = {
        "name": "ops",
        "kind": "email",
        "target": "ops@example.com",
        "events": nested_list(depth),
    }
    response = api.post(reverse("orchestrator:api-channel-list"), body, format="multipart")
    assert response.status_code == 400
    assert "nested" in " ".join(response.json()["events"])
    assert not NotificationChannel.objects.exists()


def test_a_deep_json_body_below_the_recursion_limit_is_a_400_naming_the_field(
    api: APIClient,
) -> None:
    definition = make_definition("noop", "tests.sample_tasks.noop")
    body = json.dumps(task_form(definition.pk)).replace('"{}"', nested_object(DEEP_BUT_DECODABLE))
    response = api.generic(
        "POST", reverse("orchestrator:api-scheduled-task-list"), body, "application/json"
    )
    assert response.status_code == 400
    assert "nested" in " ".join(response.json()["kwargs"])


@pytest.mark.parametrize("depth", [PAST_RECURSION_LIMIT, DEEP_BUT_DECODABLE])
@pytest.mark.parametrize("encoding", ["form", "multipart"])
def test_deep_run_now_kwargs_are_a_400_naming_the_field(
    api: APIClient, depth: int, encoding: str
) -> None:
    task = make_scheduled_task("echo", "tests.sample_tasks.echo")
    url = reverse("orchestrator:api-scheduled-task-run", args=[task.pk])
    response = api.post(
        url, {"kwargs": nested_list(depth)}, format=encoding if encoding == "multipart" else None
    )
    assert response.status_code == 400
    assert "nested" in " ".join(response.json()["kwargs"])
    assert not TaskRun.objects.exists()


@pytest.mark.parametrize("depth", [PAST_RECURSION_LIMIT, DEEP_BUT_DECODABLE])
@pytest.mark.parametrize("field", ["kwargs", "retry_on", "never_retry_on"])
def test_deep_json_in_the_admin_form_is_a_form_error(
    admin_web: Client, field: str, depth: int
) -> None:
    definition = make_definition("noop", "tests.sample_tasks.noop")
    data = task_form(definition.pk, **{field: nested_list(depth)})
    data.update(
        {
            "max_retries": 3,
            "retry_backoff": "exponential",
            "retry_delay": 60,
            "retry_backoff_max": 3600,
            "overlap": "allow",
            "catch_up": "none",
            "catch_up_limit": 1,
        }
    )
    response = admin_web.post(reverse("admin:orchestrator_scheduledtask_add"), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors
    assert not ScheduledTask.objects.exists()


@pytest.mark.parametrize("depth", [PAST_RECURSION_LIMIT, DEEP_BUT_DECODABLE])
def test_deep_run_now_kwargs_on_the_dashboard_are_a_form_error(
    admin_web: Client, depth: int
) -> None:
    task = make_scheduled_task("echo", "tests.sample_tasks.echo")
    response = admin_web.post(
        reverse("orchestrator:task-run", args=[task.pk]), {"kwargs": nested_list(depth)}
    )
    assert response.status_code == 200  # the task page again, with the form's error
    assert "nested" in response.context["run_form"].errors["kwargs"][0]
    assert not TaskRun.objects.exists()


# --- written straight into the database --------------------------------------------------------


def write_raw(table: str, column: str, pk: int, text: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", [text, pk])


def db_depth() -> int:
    """As deep as the database stores: SQLite's JSON_VALID() check stops at 1,000 levels, which
    is past Python's recursion limit already once a request or a worker is on the stack.
    MariaDB and MySQL refuse JSON nested past 32 levels as it is written: no such row exists
    there, and the tests that write one are skipped."""
    if connection.vendor == "mysql":
        pytest.skip("MariaDB/MySQL's JSON_VALID check refuses JSON nested past 32 levels")
    return 990 if connection.vendor == "sqlite" else 5000


@pytest.fixture
def deep_task() -> ScheduledTask:
    task = make_scheduled_task("deep", "tests.sample_tasks.echo")
    make_scheduled_task("fine", cron="0 3 * * *")
    write_raw("orchestrator_scheduledtask", "kwargs", task.pk, nested_object(db_depth()))
    return task


def test_kwargs_nested_deeply_in_the_database_render_on_every_page(
    deep_task: ScheduledTask, admin_web: Client, api: APIClient
) -> None:
    run = make_run(deep_task, status=TaskRun.Status.FAILED, error_message="boom")
    write_raw("orchestrator_taskrun", "kwargs_override", run.pk, nested_object(db_depth()))
    write_raw("orchestrator_taskrun", "result", run.pk, nested_list(db_depth()))
    pages = {
        "admin list": admin_web.get(reverse("admin:orchestrator_scheduledtask_changelist")),
        "admin change": admin_web.get(
            reverse("admin:orchestrator_scheduledtask_change", args=[deep_task.pk])
        ),
        "admin run list": admin_web.get(reverse("admin:orchestrator_taskrun_changelist")),
        "admin run": admin_web.get(reverse("admin:orchestrator_taskrun_change", args=[run.pk])),
        "dashboard": admin_web.get(reverse("orchestrator:dashboard")),
        "dashboard task": admin_web.get(reverse("orchestrator:task-detail", args=[deep_task.pk])),
        "api list": api.get(reverse("orchestrator:api-scheduled-task-list")),
        "api detail": api.get(
            reverse("orchestrator:api-scheduled-task-detail", args=[deep_task.pk])
        ),
        "api runs": api.get(reverse("orchestrator:api-run-list")),
        "api run": api.get(reverse("orchestrator:api-run-detail", args=[run.pk])),
    }
    assert {name: page.status_code for name, page in pages.items()} == dict.fromkeys(pages, 200)
    assert "nested too deeply" in pages["admin change"].content.decode()
    assert "nested too deeply" in pages["dashboard task"].content.decode()
    assert "nested too deeply" in pages["api detail"].json()["kwargs"]


def test_saving_a_task_with_unreadable_kwargs_is_refused_on_the_kwargs_field(
    deep_task: ScheduledTask, api: APIClient
) -> None:
    response = api.patch(
        reverse("orchestrator:api-scheduled-task-detail", args=[deep_task.pk]),
        {"description": "x"},
        format="json",
    )
    assert response.status_code == 400
    assert "nested too deeply" in " ".join(response.json()["kwargs"])


def test_the_dispatcher_records_a_failed_run_for_kwargs_nested_deeply_in_the_database(
    deep_task: ScheduledTask,
) -> None:
    outcome = dispatcher.run_task(dispatcher.Attempt(deep_task.pk))
    run = TaskRun.objects.get()
    assert outcome.action is dispatcher.Action.DONE
    assert run.status == TaskRun.Status.FAILED
    assert "kwargs" in run.error_message
    assert "flatter JSON object" in run.error_message
    # The unreadable value is kept as it was, for someone to look at.
    deep_task.refresh_from_db()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT kwargs FROM orchestrator_scheduledtask WHERE id = %s", [deep_task.pk]
        )
        (stored,) = cursor.fetchone()
    assert stored.count("{") == db_depth()


# --- integer filters too large for the database -------------------------------------------------

TOO_LARGE = "99999999999999999999"  # wider than 64 bits


@pytest.mark.parametrize("value", [TOO_LARGE, f"-{TOO_LARGE}", "0", "-1", "1.5", "x"])
def test_an_api_run_filter_that_is_not_a_storable_id_is_a_400_naming_it(
    api: APIClient, value: str
) -> None:
    make_run(make_scheduled_task("t"))
    response = api.get(reverse("orchestrator:api-run-list"), {"scheduled_task": value})
    assert response.status_code == 400
    assert "whole number" in str(response.json()["scheduled_task"])


def test_the_largest_storable_id_is_a_filter_that_matches_nothing(api: APIClient) -> None:
    make_run(make_scheduled_task("t"))
    response = api.get(reverse("orchestrator:api-run-list"), {"scheduled_task": str(2**63 - 1)})
    assert response.status_code == 200
    assert response.json()["results"] == []


@pytest.mark.parametrize(
    ("changelist", "query"),
    [
        ("taskrun", "scheduled_task"),
        ("taskrun", "scheduled_task__exact"),
        ("taskrun", "scheduled_task__in"),
        ("taskrun", "scheduled_task__id__in"),
        ("taskrun", "scheduled_task__gt"),
        ("taskrun", "attempt__in"),
        ("taskrun", "started_at__year"),
        ("scheduledtask", "task_definition"),
        ("scheduledtask", "task_definition__id__in"),
        ("scheduledtask", "notification_channels"),
        ("notificationdelivery", "channel"),
        ("notificationdelivery", "scheduled_task"),
    ],
)
@pytest.mark.parametrize("value", [TOO_LARGE, f"-{TOO_LARGE}", f"1,{TOO_LARGE}"])
def test_an_admin_list_filtered_by_a_number_too_large_for_the_database_is_empty(
    admin_web: Client, changelist: str, query: str, value: str
) -> None:
    make_run(make_scheduled_task("t"))
    page = admin_web.get(reverse(f"admin:orchestrator_{changelist}_changelist"), {query: value})
    assert page.status_code == 200
    assert list(page.context["cl"].result_list) == []


def test_an_admin_list_keeps_text_filters_that_look_like_large_numbers(admin_web: Client) -> None:
    make_scheduled_task("t", queue=TOO_LARGE)
    page = admin_web.get(
        reverse("admin:orchestrator_scheduledtask_changelist"), {"queue": TOO_LARGE}
    )
    assert page.status_code == 200
    assert [task.name for task in page.context["cl"].result_list] == ["t"]


@pytest.mark.parametrize("page_number", [TOO_LARGE, f"-{TOO_LARGE}"])
def test_dashboard_pages_with_numbers_too_large_for_the_database_render(
    admin_web: Client, page_number: str
) -> None:
    task = make_scheduled_task("t")
    make_run(task)
    assert (
        admin_web.get(reverse("orchestrator:dashboard"), {"page": page_number}).status_code == 200
    )
    detail = admin_web.get(
        reverse("orchestrator:task-detail", args=[task.pk]), {"page": page_number}
    )
    assert detail.status_code == 200
    assert admin_web.get(f"/tasks/{TOO_LARGE}/").status_code == 404


@pytest.mark.parametrize("object_id", ["12345", TOO_LARGE])
def test_the_admin_history_of_a_missing_task_goes_back_to_the_list(
    admin_web: Client, object_id: str
) -> None:
    page = admin_web.get(reverse("admin:orchestrator_scheduledtask_history", args=[object_id]))
    assert page.status_code == 302


def test_channel_events_nested_deeply_in_the_database_render_and_alert_nothing(
    admin_web: Client, api: APIClient
) -> None:
    from orchestrator.notifications.delivery import channels_for

    channel = make_channel("ops", is_default=True)
    write_raw("orchestrator_notificationchannel", "events", channel.pk, nested_list(db_depth()))
    task = make_scheduled_task("t")
    pages = {
        "admin list": admin_web.get(reverse("admin:orchestrator_notificationchannel_changelist")),
        "admin change": admin_web.get(
            reverse("admin:orchestrator_notificationchannel_change", args=[channel.pk])
        ),
        "api": api.get(reverse("orchestrator:api-channel-list")),
        "dashboard task": admin_web.get(reverse("orchestrator:task-detail", args=[task.pk])),
    }
    assert {name: page.status_code for name, page in pages.items()} == dict.fromkeys(pages, 200)
    assert pages["api"].json()["results"][0]["events"] == "(nested too deeply to show)"
    assert channels_for(task, "failure") == []


@pytest.mark.parametrize("field", ["retry_on", "never_retry_on"])
def test_exception_rules_nested_deeply_in_the_database_fail_the_run_with_a_reason(
    admin_web: Client, field: str
) -> None:
    task = make_scheduled_task("t")
    write_raw("orchestrator_scheduledtask", field, task.pk, nested_list(db_depth()))
    outcome = dispatcher.run_task(dispatcher.Attempt(task.pk))
    assert outcome.run is not None and outcome.run.status == TaskRun.Status.FAILED
    assert field in outcome.run.error_message
    page = admin_web.get(reverse("admin:orchestrator_scheduledtask_change", args=[task.pk]))
    assert page.status_code == 200
    assert "nested too deeply to show" in page.content.decode()
