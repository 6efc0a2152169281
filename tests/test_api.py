"""The JSON API: permissions, validation shared with the admin, runs, channels, schema, queries."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from orchestrator.api.urls import router
from orchestrator.models import NotificationChannel, ScheduledTask, TaskDefinition, TaskRun
from tests.integration import conftest as integration
from tests.utils import make_channel, make_definition, make_run, make_scheduled_task, make_user

pytestmark = pytest.mark.django_db

# The real-worker fixtures live in tests/integration/conftest.py; registered here as well for the
# end-to-end test at the bottom of this module.
broker_url = integration.broker_url
real_database = integration.real_database
start_worker = integration.start_worker

HOOK = "https://hooks.slack.com/services/T000/B000/abcdefghijkl"


def client_for(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def all_perms(model: str) -> list[str]:
    return [f"orchestrator.{action}_{model}" for action in ("view", "add", "change", "delete")]


@pytest.fixture
def task() -> ScheduledTask:
    return make_scheduled_task("nightly", cron="0 3 * * *")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    calls: list[tuple[int, str]] = []

    def fake_run_now(
        self: ScheduledTask, kwargs: Any = None, user: Any = None, trigger: str = "manual"
    ) -> SimpleNamespace:
        calls.append((self.pk, str(trigger)))
        return SimpleNamespace(id="0f3c-celery-id")

    monkeypatch.setattr(ScheduledTask, "run_now", fake_run_now)
    return calls


def url(name: str, *args: Any) -> str:
    return reverse(f"orchestrator:{name}", args=args)


# --- permissions matrix ------------------------------------------------------------------------


def endpoints(task: ScheduledTask) -> list[tuple[str, str, dict | None, str]]:
    """(method, url, body, permission that allows it) for every endpoint and method."""
    definition = task.task_definition
    channel = make_channel("ops")
    run = make_run(task)
    new_task = {
        "name": "created",
        "task_definition": definition.pk,
        "cron": "*/5 * * * *",
        "timezone": "UTC",
    }
    return [
        ("get", url("api-task-definition-list"), None, "view_taskdefinition"),
        ("get", url("api-task-definition-detail", definition.pk), None, "view_taskdefinition"),
        (
            "post",
            url("api-task-definition-list"),
            {"name": "new", "import_path": "tests.sample_tasks.echo"},
            "add_taskdefinition",
        ),
        (
            "patch",
            url("api-task-definition-detail", definition.pk),
            {"category": "x"},
            "change_taskdefinition",
        ),
        ("get", url("api-scheduled-task-list"), None, "view_scheduledtask"),
        ("get", url("api-scheduled-task-detail", task.pk), None, "view_scheduledtask"),
        ("post", url("api-scheduled-task-list"), new_task, "add_scheduledtask"),
        (
            "put",
            url("api-scheduled-task-detail", task.pk),
            {**new_task, "name": "nightly"},
            "change_scheduledtask",
        ),
        (
            "patch",
            url("api-scheduled-task-detail", task.pk),
            {"enabled": False},
            "change_scheduledtask",
        ),
        ("post", url("api-scheduled-task-run", task.pk), None, "run_scheduledtask"),
        ("get", url("api-run-list"), None, "view_taskrun"),
        ("get", url("api-run-detail", run.pk), None, "view_taskrun"),
        ("get", url("api-channel-list"), None, "view_notificationchannel"),
        ("get", url("api-channel-detail", channel.pk), None, "view_notificationchannel"),
        (
            "post",
            url("api-channel-list"),
            {"name": "mail", "kind": "email", "target": "a@example.com"},
            "add_notificationchannel",
        ),
        (
            "patch",
            url("api-channel-detail", channel.pk),
            {"enabled": False},
            "change_notificationchannel",
        ),
        ("delete", url("api-channel-detail", channel.pk), None, "delete_notificationchannel"),
        ("delete", url("api-scheduled-task-detail", task.pk), None, "delete_scheduledtask"),
    ]


OK = {"get": 200, "post": 201, "put": 200, "patch": 200, "delete": 204}


def test_every_endpoint_refuses_anonymous_users_with_401(task: ScheduledTask, sent: list) -> None:
    for method, path, body, _ in endpoints(task):
        response = getattr(APIClient(), method)(path, body, format="json")
        assert response.status_code == 401, (method, path)
        assert response["WWW-Authenticate"] == "Token"
    assert sent == []


def test_every_endpoint_refuses_staff_without_permissions(task: ScheduledTask, sent: list) -> None:
    staff = make_user("staff")
    staff.is_staff = True
    staff.save()
    for method, path, body, _ in endpoints(task):
        response = getattr(client_for(staff), method)(path, body, format="json")
        assert response.status_code == 403, (method, path)
    assert sent == []
    assert ScheduledTask.objects.filter(pk=task.pk, enabled=True).exists()


def test_every_endpoint_allows_exactly_its_permission(task: ScheduledTask, sent: list) -> None:
    for index, (method, path, body, perm) in enumerate(endpoints(task)):
        user = make_user(f"user{index}", f"orchestrator.{perm}")
        response = getattr(client_for(user), method)(path, body, format="json")
        expected = 202 if path.endswith("/run/") else OK[method]
        assert response.status_code == expected, (method, path, response.content)


def test_viewers_can_read_but_not_edit_or_run(task: ScheduledTask, sent: list) -> None:
    viewer = client_for(make_user("viewer", "orchestrator.view_scheduledtask"))
    assert viewer.get(url("api-scheduled-task-list")).status_code == 200
    assert (
        viewer.patch(url("api-scheduled-task-detail", task.pk), {"enabled": False}).status_code
        == 403
    )
    assert viewer.delete(url("api-scheduled-task-detail", task.pk)).status_code == 403
    assert viewer.post(url("api-scheduled-task-run", task.pk)).status_code == 403
    assert sent == []


def test_the_change_permission_also_allows_reading_as_in_the_admin(task: ScheduledTask) -> None:
    editor = client_for(make_user("editor", "orchestrator.change_scheduledtask"))
    assert editor.get(url("api-scheduled-task-detail", task.pk)).status_code == 200


def test_token_authentication(task: ScheduledTask) -> None:
    user = make_user("service", "orchestrator.view_scheduledtask")
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get(url("api-scheduled-task-list")).status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Token wrong")
    assert client.get(url("api-scheduled-task-list")).status_code == 401


def test_session_authentication_enforces_csrf(task: ScheduledTask, sent: list) -> None:
    user = make_user("runner", "orchestrator.run_scheduledtask")
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post(url("api-scheduled-task-run", task.pk))
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert sent == []


# --- scheduled tasks ---------------------------------------------------------------------------


@pytest.fixture
def admin_api() -> APIClient:
    return client_for(User.objects.create_superuser("root", password="pw"))


def test_scheduled_tasks_use_the_model_field_names(
    task: ScheduledTask, admin_api: APIClient
) -> None:
    data = admin_api.get(url("api-scheduled-task-detail", task.pk)).json()
    model_fields = {
        f.name for f in ScheduledTask._meta.get_fields() if f.concrete and not f.auto_created
    }
    assert model_fields - {"periodic_task"} <= set(data)
    assert data["task_definition"] == task.task_definition_id
    assert data["schedule_description"] == "At 03:00"
    assert data["next_run_at"] is not None


def test_creating_a_task_validates_and_saves_it(admin_api: APIClient) -> None:
    definition = make_definition("add", "tests.sample_tasks.add")
    channel = make_channel("ops")
    response = admin_api.post(
        url("api-scheduled-task-list"),
        {
            "name": "adder",
            "task_definition": definition.pk,
            "cron": "*/10 * * * *",
            "timezone": "Europe/Paris",
            "kwargs": {"a": 1, "b": 2},
            "notification_channels": [channel.pk],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    created = ScheduledTask.objects.get(name="adder")
    assert created.kwargs == {"a": 1, "b": 2}
    assert list(created.notification_channels.all()) == [channel]


def test_saving_through_the_api_syncs_beat_like_the_admin(admin_api: APIClient) -> None:
    definition = make_definition("noop", "tests.sample_tasks.noop")
    response = admin_api.post(
        url("api-scheduled-task-list"),
        {"name": "synced", "task_definition": definition.pk, "cron": "15 4 * * *"},
        format="json",
    )
    created = ScheduledTask.objects.get(pk=response.json()["id"])
    assert created.periodic_task is not None
    assert created.periodic_task.crontab.minute == "15"

    admin_api.patch(url("api-scheduled-task-detail", created.pk), {"enabled": False}, format="json")
    created.periodic_task.refresh_from_db()
    assert created.periodic_task.enabled is False


@pytest.mark.django_db(transaction=True)
def test_a_failing_beat_sync_leaves_nothing_half_saved(
    task: ScheduledTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator import beat_sync

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("beat tables are locked")

    monkeypatch.setattr(beat_sync, "beat_sync", broken)
    client = client_for(User.objects.create_superuser("root", password="pw"))
    client.raise_request_exception = False
    response = client.patch(
        url("api-scheduled-task-detail", task.pk), {"cron": "0 4 * * *"}, format="json"
    )
    assert response.status_code == 500
    task.refresh_from_db()
    assert task.cron == "0 3 * * *"


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"cron": "* * *"}, "cron", "has 5 fields"),
        ({"cron": "61 * * * *"}, "cron", "Invalid minute"),
        ({"timezone": "Mars/Olympus"}, "timezone", "is not a known time zone"),
        ({"kwargs": [1, 2]}, "kwargs", "Enter a JSON object"),
        ({"kwargs": {"unknown": 1}}, "kwargs", "tests.sample_tasks.add"),  # from clean()
        ({"priority": 12}, "priority", "less than or equal to 9"),
    ],
)
def test_invalid_tasks_are_refused_with_the_admins_messages(
    admin_api: APIClient, body: dict, field: str, fragment: str
) -> None:
    definition = make_definition("add", "tests.sample_tasks.add")
    values = {
        "name": "bad",
        "task_definition": definition.pk,
        "cron": "* * * * *",
        "kwargs": {"a": 1},
        **body,
    }
    response = admin_api.post(url("api-scheduled-task-list"), values, format="json")
    assert response.status_code == 400
    errors = response.json()
    assert field in errors, errors
    assert any(fragment in message for message in errors[field]), errors

    # The same messages as full_clean(), which the admin's form runs.
    instance = ScheduledTask(
        **{**values, "task_definition": definition, "timezone": values.get("timezone", "UTC")}
    )
    with pytest.raises(Exception) as raised:
        instance.full_clean()
    assert set(errors[field]) <= set(raised.value.message_dict[field])
    assert not ScheduledTask.objects.filter(name="bad").exists()


def test_a_refused_update_leaves_the_task_unchanged(
    task: ScheduledTask, admin_api: APIClient
) -> None:
    response = admin_api.patch(
        url("api-scheduled-task-detail", task.pk), {"kwargs": {"nope": 1}}, format="json"
    )
    assert response.status_code == 400
    assert "kwargs" in response.json()
    task.refresh_from_db()
    assert task.kwargs == {}


def test_definitions_outside_the_allow_list_are_refused(admin_api: APIClient) -> None:
    response = admin_api.post(
        url("api-task-definition-list"),
        {"name": "evil", "import_path": "os.system"},
        format="json",
    )
    assert response.status_code == 400
    assert "import_path" in response.json()
    assert not TaskDefinition.objects.filter(name="evil").exists()


def test_deleting_a_definition_in_use_is_a_conflict(
    task: ScheduledTask, admin_api: APIClient
) -> None:
    response = admin_api.delete(url("api-task-definition-detail", task.task_definition_id))
    assert response.status_code == 409
    assert "nightly" in response.json()["detail"]


def test_run_returns_202_with_the_celery_task_id(task: ScheduledTask, sent: list) -> None:
    runner = client_for(make_user("runner", "orchestrator.run_scheduledtask"))
    response = runner.post(url("api-scheduled-task-run", task.pk))
    assert response.status_code == 202
    assert response.json() == {"celery_task_id": "0f3c-celery-id"}
    assert sent == [(task.pk, "api")]


def test_run_of_an_unknown_task_is_404(sent: list, admin_api: APIClient) -> None:
    assert admin_api.post(url("api-scheduled-task-run", 999999)).status_code == 404
    assert sent == []


def test_run_when_the_broker_is_down_is_503(
    task: ScheduledTask, admin_api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(
        self: ScheduledTask, kwargs: Any = None, user: Any = None, trigger: str = "manual"
    ) -> None:
        raise ConnectionRefusedError("redis://:secret@broker:6379")

    monkeypatch.setattr(ScheduledTask, "run_now", broken)
    response = admin_api.post(url("api-scheduled-task-run", task.pk))
    assert response.status_code == 503
    assert "secret" not in response.content.decode()


# --- runs --------------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_and_filtered(
    task: ScheduledTask, admin_api: APIClient
) -> None:
    other = make_scheduled_task("other")
    base = timezone.now().replace(microsecond=0) - dt.timedelta(days=3)
    a = make_run(task, status="succeeded", started_at=base)
    b = make_run(task, status="failed", started_at=base + dt.timedelta(days=1))
    c = make_run(other, status="failed", started_at=base + dt.timedelta(days=2))

    def ids(**params: Any) -> list[int]:
        response = admin_api.get(url("api-run-list"), params)
        assert response.status_code == 200, response.content
        return [run["id"] for run in response.json()["results"]]

    assert ids() == [c.pk, b.pk, a.pk]
    assert ids(scheduled_task=task.pk) == [b.pk, a.pk]
    assert ids(status="failed") == [c.pk, b.pk]
    assert ids(status=["failed", "succeeded"], scheduled_task=task.pk) == [b.pk, a.pk]
    assert ids(started_after=(base + dt.timedelta(hours=1)).isoformat()) == [c.pk, b.pk]
    assert ids(started_before=(base + dt.timedelta(days=1)).isoformat()) == [a.pk]
    assert ids(started_after=(base + dt.timedelta(days=1)).date().isoformat()) == [c.pk, b.pk]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "exploded"}, "status"),
        ({"scheduled_task": "abc"}, "scheduled_task"),
        ({"started_after": "yesterday"}, "started_after"),
    ],
)
def test_bad_run_filters_are_400(admin_api: APIClient, params: dict, field: str) -> None:
    response = admin_api.get(url("api-run-list"), params)
    assert response.status_code == 400
    assert field in response.json()


def test_runs_are_read_only(task: ScheduledTask, admin_api: APIClient) -> None:
    run = make_run(task)
    assert admin_api.post(url("api-run-list"), {}).status_code == 405
    assert admin_api.delete(url("api-run-detail", run.pk)).status_code == 405


def test_runs_are_paginated_by_cursor(task: ScheduledTask, admin_api: APIClient) -> None:
    now = timezone.now()
    TaskRun.objects.bulk_create(
        TaskRun(scheduled_task=task, status="succeeded", started_at=now - dt.timedelta(minutes=i))
        for i in range(120)
    )
    first = admin_api.get(url("api-run-list")).json()
    assert len(first["results"]) == 50
    second = admin_api.get(first["next"]).json()
    assert second["results"][0]["started_at"] < first["results"][-1]["started_at"]


# --- channels ----------------------------------------------------------------------------------


def test_channel_targets_are_masked_in_every_response(admin_api: APIClient) -> None:
    created = admin_api.post(
        url("api-channel-list"),
        {"name": "slack", "kind": "slack", "target": HOOK},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["target"] == "https://hooks.slack.com/…ijkl"
    pk = created.json()["id"]
    for response in (
        admin_api.get(url("api-channel-list")),
        admin_api.get(url("api-channel-detail", pk)),
        admin_api.patch(url("api-channel-detail", pk), {"enabled": False}, format="json"),
    ):
        assert response.status_code == 200
        body = response.content.decode()
        assert HOOK not in body and "T000" not in body
    # A PATCH without a target keeps the stored one.
    assert NotificationChannel.objects.get(pk=pk).target == HOOK


def test_channel_errors_never_show_the_target(admin_api: APIClient) -> None:
    channel = make_channel("slack", kind="slack", target=HOOK)
    NotificationChannel.objects.filter(pk=channel.pk).update(last_error=f"POST {HOOK}: 404")
    body = admin_api.get(url("api-channel-detail", channel.pk)).content.decode()
    assert HOOK not in body and "abcdefghijkl" not in body


def test_channels_that_are_not_secrets_are_shown(admin_api: APIClient) -> None:
    make_channel("mail", target="ops@example.com")
    assert admin_api.get(url("api-channel-list")).json()["results"][0]["target"] == (
        "ops@example.com"
    )


# --- schema ------------------------------------------------------------------------------------


def test_the_openapi_schema_describes_every_endpoint(admin_api: APIClient) -> None:
    from drf_spectacular.drainage import GENERATOR_STATS

    GENERATOR_STATS.reset()
    response = admin_api.get(url("api-schema"), {"format": "json"})
    assert response.status_code == 200
    assert not GENERATOR_STATS, "drf-spectacular warned while generating the schema"
    schema = response.json()
    assert schema["info"]["title"] == "Orchestrator API"

    expected: set[tuple[str, str]] = set()
    for prefix, viewset, _basename in router.registry:
        for route in router.get_routes(viewset):
            path = "/api/" + route.url.replace("^{prefix}", prefix).replace(
                "{trailing_slash}$", "/"
            )
            path = path.replace("{lookup}", "{id}")
            for method, action in route.mapping.items():
                if hasattr(viewset, action):
                    expected.add((path.replace("//", "/"), method))
    described = {
        (path, method) for path, operations in schema["paths"].items() for method in operations
    }
    assert expected, "the router registered nothing"
    assert expected <= described, expected - described
    assert ("/api/scheduled-tasks/{id}/run/", "post") in described
    run = schema["paths"]["/api/scheduled-tasks/{id}/run/"]["post"]
    assert "202" in run["responses"]
    run_filters = {p["name"] for p in schema["paths"]["/api/runs/"]["get"]["parameters"]}
    assert {"scheduled_task", "status", "started_after", "started_before"} <= run_filters
    # Only this app's endpoints, and no secret in the channel target's description either.
    assert all(path.startswith("/api/") for path in schema["paths"])


def test_the_schema_is_valid_openapi(admin_api: APIClient) -> None:
    from drf_spectacular.validation import validate_schema

    validate_schema(admin_api.get(url("api-schema"), {"format": "json"}).json())


def test_the_schema_needs_a_login() -> None:
    assert APIClient().get(url("api-schema")).status_code == 401


# --- query counts ------------------------------------------------------------------------------


def count_queries(user: User, path: str, **params: Any) -> int:
    # A fresh user object per request, so its permission cache is not carried over.
    client = client_for(User.objects.get(pk=user.pk))
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path, params)
    assert response.status_code == 200
    return len(queries)


def test_list_query_counts_do_not_grow_with_rows() -> None:
    user = make_user(
        "reader",
        "orchestrator.view_scheduledtask",
        "orchestrator.view_taskrun",
        "orchestrator.view_notificationchannel",
    )
    first = make_scheduled_task("first")
    first.notification_channels.add(make_channel("c0"))
    TaskRun.objects.bulk_create(
        TaskRun(scheduled_task=first, status="succeeded") for _ in range(10_000)
    )
    before = {
        name: count_queries(user, url(name))
        for name in ("api-scheduled-task-list", "api-run-list", "api-channel-list")
    }
    for n in range(15):
        task = make_scheduled_task(f"task-{n}")
        task.notification_channels.add(make_channel(f"c{n + 1}"))
    after = {
        name: count_queries(user, url(name))
        for name in ("api-scheduled-task-list", "api-run-list", "api-channel-list")
    }
    assert before == after
    assert max(after.values()) <= 5, after


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_run_through_the_api_is_executed_by_a_real_worker(start_worker) -> None:
    task = make_scheduled_task("api-add", "tests.sample_tasks.add", kwargs={"a": 2, "b": 3})
    token = Token.objects.create(user=make_user("service", "orchestrator.run_scheduledtask"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    start_worker()

    response = client.post(url("api-scheduled-task-run", task.pk))

    assert response.status_code == 202
    celery_task_id = response.json()["celery_task_id"]
    run = integration.wait_until(
        lambda: TaskRun.objects.filter(
            scheduled_task=task, status=TaskRun.Status.SUCCEEDED
        ).first(),
        timeout=30,
    )
    assert (run.trigger, run.result, run.celery_task_id) == ("api", 5, celery_task_id)


# --- operator controls ------------------------------------------------------------------------


def test_run_with_kwargs_that_do_not_fit_is_a_400_on_kwargs(admin_api: APIClient) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    response = admin_api.post(
        url("api-scheduled-task-run", task.pk), {"kwargs": {"c": 1}}, format="json"
    )
    assert response.status_code == 400
    assert "Unknown argument(s) c" in response.json()["kwargs"][0]
    response = admin_api.post(
        url("api-scheduled-task-run", task.pk), {"kwargs": [1]}, format="json"
    )
    assert response.status_code == 400 and "kwargs" in response.json()
    assert not TaskRun.objects.exists()


def test_run_with_kwargs_queues_a_run_recording_them(
    admin_api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    with (
        mock.patch("orchestrator.tasks.run_scheduled_task.apply_async") as apply_async,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = admin_api.post(
            url("api-scheduled-task-run", task.pk), {"kwargs": {"a": 9}}, format="json"
        )
    assert response.status_code == 202
    run = TaskRun.objects.get()
    assert (run.status, run.trigger, run.kwargs_override) == ("queued", "api", {"a": 9})
    assert run.triggered_by.username == "root"
    assert apply_async.call_args.kwargs["kwargs"]["kwargs_override"] == {"a": 9}


def test_pause_and_resume(admin_api: APIClient, task: ScheduledTask) -> None:
    until = (timezone.now() + dt.timedelta(hours=2)).isoformat()
    response = admin_api.post(
        url("api-scheduled-task-pause", task.pk), {"reason": "db migration", "until": until}
    )
    assert response.status_code == 200
    assert (response.json()["paused"], response.json()["pause_reason"]) == (True, "db migration")
    response = admin_api.post(url("api-scheduled-task-resume", task.pk))
    assert (response.status_code, response.json()["paused"]) == (200, False)


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({}, "reason", "This field is required"),
        ({"reason": "  "}, "reason", "blank"),
        ({"reason": "x", "until": "2020-01-01T00:00:00Z"}, "until", "This time has passed"),
        ({"reason": "x", "until": "next tuesday"}, "until", "Datetime has wrong format"),
    ],
)
def test_a_bad_pause_is_a_400_naming_the_field(
    admin_api: APIClient, task: ScheduledTask, body: dict, field: str, fragment: str
) -> None:
    response = admin_api.post(url("api-scheduled-task-pause", task.pk), body)
    assert response.status_code == 400
    assert any(fragment in message for message in response.json()[field]), response.json()
    task.refresh_from_db()
    assert task.paused is False


def test_cancel_is_202_and_409_once_finished(admin_api: APIClient, task: ScheduledTask) -> None:
    queued = make_run(task, status=TaskRun.Status.QUEUED, celery_task_id="c1")
    with mock.patch("celery.current_app.control.revoke"):
        response = admin_api.post(url("api-run-cancel", queued.pk))
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    again = admin_api.post(url("api-run-cancel", queued.pk))
    assert again.status_code == 409
    assert "already finished" in again.json()["detail"]


def test_the_history_lists_an_admin_edit_with_its_user_source_and_fields(
    admin_api: APIClient, task: ScheduledTask
) -> None:
    from orchestrator import history

    editor = make_user("editor")
    with history.changes_by(editor, history.Source.ADMIN):
        task.max_retries = 9
        task.save()
    response = admin_api.get(url("api-scheduled-task-history", task.pk))
    assert response.status_code == 200
    latest = response.json()["results"][0]
    assert (latest["changed_by"], latest["source"], latest["action"]) == (
        "editor",
        "admin",
        "update",
    )
    assert latest["changes"]["max_retries"] == ["3", "9"]
    assert set(latest) == {"changed_at", "changed_by", "source", "action", "changes"}


def test_a_run_s_own_endpoint_returns_its_log_and_a_page_of_runs_does_not(
    task: ScheduledTask, admin_api: APIClient
) -> None:
    run = make_run(task, status="succeeded", log="INFO job: 12 invoices sent\n")

    detail = admin_api.get(url("api-run-detail", run.pk)).json()
    assert detail["log"] == "INFO job: 12 invoices sent\n"
    with CaptureQueriesContext(connection) as queries:
        listed = admin_api.get(url("api-run-list")).json()["results"]
    assert [item["id"] for item in listed] == [run.pk]
    assert "log" not in listed[0]
    assert not any('"log"' in query["sql"] for query in queries.captured_queries)
