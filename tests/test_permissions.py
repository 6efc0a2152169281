"""Who may do what: one matrix over every admin action, dashboard action and API endpoint.

Four roles meet every operation: anonymous, staff without permissions, staff who may view
everything, and staff holding exactly the permission the operation documents. Each cell checks the
status code and the effect: a refused operation must change nothing, a permitted one must happen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import PeriodicTask
from rest_framework.test import APIClient

from orchestrator import access
from orchestrator.models import (
    NotificationChannel,
    ScheduledTask,
    TaskDefinition,
    TaskRun,
)
from tests.utils import make_channel, make_definition, make_run, make_scheduled_task

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "staff", "viewer", "permitted")
VIEW_ALL = tuple(
    f"orchestrator.view_{model}"
    for model in ("taskdefinition", "scheduledtask", "taskrun", "notificationchannel")
)


@dataclass
class World:
    definition: TaskDefinition
    task: ScheduledTask
    channel: NotificationChannel
    run: TaskRun
    sent: list[tuple[int, str]] = field(default_factory=list)
    tested: list[int] = field(default_factory=list)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    definition = make_definition("noop", "tests.sample_tasks.noop")
    task = make_scheduled_task("nightly", definition=definition, cron="0 3 * * *")
    channel = make_channel("ops")
    world = World(definition, task, channel, make_run(task))

    def fake_run_now(
        self: ScheduledTask, kwargs: Any = None, user: Any = None, trigger: str = "manual"
    ) -> SimpleNamespace:
        world.sent.append((self.pk, str(trigger)))
        return SimpleNamespace(id="celery-id")

    def fake_queue_test(row: NotificationChannel) -> None:
        world.tested.append(row.pk)

    monkeypatch.setattr(ScheduledTask, "run_now", fake_run_now)
    monkeypatch.setattr("orchestrator.notifications.admin.queue_test_notification", fake_queue_test)
    return world


def user_for(role: str, perms: tuple[str, ...]) -> User | None:
    if role == "anonymous":
        return None
    user = User.objects.create_user(role, password="pw", is_staff=True)
    granted = {"staff": (), "viewer": VIEW_ALL, "permitted": perms}[role]
    for perm in granted:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


@dataclass(frozen=True)
class Operation:
    """One thing a user can try: how to send it, who may, what it answers and what it changes."""

    surface: str  # "admin", "dashboard" or "api"
    name: str
    perms: tuple[str, ...]  # what the "permitted" role holds
    request: Callable[[World], tuple[str, str, Any]]  # (method, url, body)
    ok: int  # the status for the permitted role
    happened: Callable[[World], bool] | None = None  # None: nothing to change (reads)
    prepare: Callable[[World], None] = lambda world: None
    viewer_status: int | None = None  # when viewing everything is not enough and says so


def admin_action(model: str, action: str, pk: Callable[[World], int]):
    def request(world: World) -> tuple[str, str, Any]:
        url = reverse(f"admin:orchestrator_{model}_changelist")
        return "post", url, {"action": action, "_selected_action": [pk(world)], "index": "0"}

    return request


def dashboard(action: str, body: dict[str, Any] | None = None):
    def request(world: World) -> tuple[str, str, Any]:
        return "post", reverse(f"orchestrator:task-{action}", args=[world.task.pk]), body or {}

    return request


def dashboard_cancel(world: World) -> tuple[str, str, Any]:
    return "post", reverse("orchestrator:run-cancel", args=[world.run.pk]), {}


def paused(world: World) -> bool:
    return ScheduledTask.objects.get(pk=world.task.pk).paused


def pause_first(world: World) -> None:
    world.task.pause("maintenance window")


def queue_the_run(world: World) -> None:
    TaskRun.objects.filter(pk=world.run.pk).update(status=TaskRun.Status.QUEUED)


def cancelled(world: World) -> bool:
    return TaskRun.objects.get(pk=world.run.pk).status == TaskRun.Status.CANCELLED


def api(method: str, name: str, pk: Callable[[World], int] | None = None, body: Any = None):
    def request(world: World) -> tuple[str, str, Any]:
        if pk is None:
            return method, reverse(f"orchestrator:{name}-list"), body
        return method, reverse(f"orchestrator:{name}-detail", args=[pk(world)]), body

    return request


def enabled(world: World) -> bool:
    return ScheduledTask.objects.get(pk=world.task.pk).enabled


def disable_first(world: World) -> None:
    world.task.enabled = False
    world.task.save()


def drop_periodic_task(world: World) -> None:
    PeriodicTask.objects.filter(pk=world.task.periodic_task_id).delete()


def exists(model: type, **lookup: Any) -> Callable[[World], bool]:
    return lambda world: model.objects.filter(**lookup).exists()


def gone(model: type, attribute: str) -> Callable[[World], bool]:
    return lambda world: not model.objects.filter(pk=getattr(world, attribute).pk).exists()


def task_pk(world: World) -> int:
    return world.task.pk


def definition_pk(world: World) -> int:
    return world.definition.pk


def channel_pk(world: World) -> int:
    return world.channel.pk


def run_pk(world: World) -> int:
    return world.run.pk


NEW_TASK = {"name": "created", "task_definition": None, "cron": "*/5 * * * *", "timezone": "UTC"}


def new_task(world: World) -> tuple[str, str, Any]:
    body = {**NEW_TASK, "task_definition": world.definition.pk}
    return "post", reverse("orchestrator:api-scheduled-task-list"), body


def run_of_task(world: World) -> tuple[str, str, Any]:
    return "post", reverse("orchestrator:api-scheduled-task-run", args=[world.task.pk]), None


def perm(*codenames: str) -> tuple[str, ...]:
    return tuple(f"orchestrator.{codename}" for codename in codenames)


OPERATIONS = [
    # --- admin actions (the permitted role also needs to reach the list: view, or change) ---
    Operation(
        "admin",
        "run-now",
        perm("view_scheduledtask", "run_scheduledtask"),
        admin_action("scheduledtask", "run_now", task_pk),
        302,
        happened=lambda w: w.sent == [(w.task.pk, "manual")],
    ),
    Operation(
        "admin",
        "enable",
        perm("change_scheduledtask"),
        admin_action("scheduledtask", "enable", task_pk),
        302,
        happened=enabled,
        prepare=disable_first,
    ),
    Operation(
        "admin",
        "disable",
        perm("change_scheduledtask"),
        admin_action("scheduledtask", "disable", task_pk),
        302,
        happened=lambda w: not enabled(w),
    ),
    Operation(
        "admin",
        "sync-to-beat",
        perm("change_scheduledtask"),
        admin_action("scheduledtask", "sync_to_beat", task_pk),
        302,
        happened=exists(PeriodicTask, name__startswith="orchestrator:"),
        prepare=drop_periodic_task,
    ),
    Operation(
        "admin",
        "send-test-notification",
        perm("change_notificationchannel"),
        admin_action("notificationchannel", "send_test_notification", channel_pk),
        302,
        happened=lambda w: w.tested == [w.channel.pk],
    ),
    Operation(
        "admin",
        "pause",
        perm("change_scheduledtask"),
        lambda w: (
            "post",
            reverse("admin:orchestrator_scheduledtask_changelist"),
            {
                "action": "pause",
                "_selected_action": [w.task.pk],
                "index": "0",
                "apply": "1",
                "reason": "maintenance window",
            },
        ),
        302,
        happened=paused,
    ),
    Operation(
        "admin",
        "resume",
        perm("change_scheduledtask"),
        admin_action("scheduledtask", "resume", task_pk),
        302,
        happened=lambda w: not paused(w),
        prepare=pause_first,
    ),
    Operation(
        "admin",
        "cancel-runs",
        perm("view_taskrun", "run_scheduledtask"),
        admin_action("taskrun", "cancel_runs", run_pk),
        302,
        happened=cancelled,
        prepare=queue_the_run,
    ),
    # --- dashboard actions ---
    Operation(
        "dashboard",
        "run",
        perm("view_scheduledtask", "run_scheduledtask"),
        dashboard("run"),
        302,
        happened=lambda w: w.sent == [(w.task.pk, "manual")],
        viewer_status=403,
    ),
    Operation(
        "dashboard",
        "enable",
        perm("change_scheduledtask"),
        dashboard("enable"),
        302,
        happened=enabled,
        prepare=disable_first,
        viewer_status=403,
    ),
    Operation(
        "dashboard",
        "disable",
        perm("change_scheduledtask"),
        dashboard("disable"),
        302,
        happened=lambda w: not enabled(w),
        viewer_status=403,
    ),
    Operation(
        "dashboard",
        "run-with-arguments",
        perm("view_scheduledtask", "run_scheduledtask"),
        dashboard("run", {"kwargs": "{}"}),
        302,
        happened=lambda w: w.sent == [(w.task.pk, "manual")],
        viewer_status=403,
    ),
    Operation(
        "dashboard",
        "pause",
        perm("change_scheduledtask"),
        dashboard("pause", {"reason": "maintenance window"}),
        302,
        happened=paused,
        viewer_status=403,
    ),
    Operation(
        "dashboard",
        "resume",
        perm("change_scheduledtask"),
        dashboard("resume"),
        302,
        happened=lambda w: not paused(w),
        prepare=pause_first,
        viewer_status=403,
    ),
    Operation(
        "dashboard",
        "cancel",
        perm("view_scheduledtask", "run_scheduledtask"),
        dashboard_cancel,
        302,
        happened=cancelled,
        prepare=queue_the_run,
        viewer_status=403,
    ),
]

API_RESOURCES = [
    # (name in URLs, model codename, world attribute, create body, patch body, patched check)
    (
        "api-task-definition",
        "taskdefinition",
        "definition",
        {"name": "new", "import_path": "tests.sample_tasks.echo"},
        {"category": "patched"},
        exists(TaskDefinition, category="patched"),
    ),
    (
        "api-scheduled-task",
        "scheduledtask",
        "task",
        None,  # built from the world: it needs the definition's id
        {"description": "patched"},
        exists(ScheduledTask, description="patched"),
    ),
    (
        "api-channel",
        "notificationchannel",
        "channel",
        {"name": "mail", "kind": "email", "target": "a@example.com"},
        {"cooldown": 1},
        exists(NotificationChannel, cooldown=1),
    ),
]

for name, model, attribute, create, patch, patched in API_RESOURCES:
    pk = (lambda attr: lambda world: getattr(world, attr).pk)(attribute)
    created_name = "created" if create is None else create["name"]
    model_class = {"taskdefinition": TaskDefinition, "scheduledtask": ScheduledTask}.get(
        model, NotificationChannel
    )
    OPERATIONS += [
        Operation("api", f"{model}-list", perm(f"view_{model}"), api("get", name), 200),
        Operation("api", f"{model}-retrieve", perm(f"view_{model}"), api("get", name, pk), 200),
        Operation(
            "api",
            f"{model}-create",
            perm(f"add_{model}"),
            new_task if create is None else api("post", name, body=create),
            201,
            happened=exists(model_class, name=created_name),
            viewer_status=403,
        ),
        Operation(
            "api",
            f"{model}-update",
            perm(f"change_{model}"),
            api("patch", name, pk, patch),
            200,
            happened=patched,
            viewer_status=403,
        ),
        Operation(
            "api",
            f"{model}-delete",
            perm(f"delete_{model}"),
            api("delete", name, pk),
            # A definition still used by a task is protected: 409, and it stays.
            409 if model == "taskdefinition" else 204,
            happened=None if model == "taskdefinition" else gone(model_class, attribute),
            viewer_status=403,
        ),
    ]

OPERATIONS += [
    Operation(
        "api",
        "scheduledtask-run",
        perm("run_scheduledtask"),
        run_of_task,
        202,
        happened=lambda w: w.sent == [(w.task.pk, "api")],
        viewer_status=403,
    ),
    Operation(
        "api",
        "scheduledtask-pause",
        perm("change_scheduledtask"),
        lambda w: (
            "post",
            reverse("orchestrator:api-scheduled-task-pause", args=[w.task.pk]),
            {"reason": "maintenance window"},
        ),
        200,
        happened=paused,
        viewer_status=403,
    ),
    Operation(
        "api",
        "scheduledtask-resume",
        perm("change_scheduledtask"),
        lambda w: (
            "post",
            reverse("orchestrator:api-scheduled-task-resume", args=[w.task.pk]),
            None,
        ),
        200,
        happened=lambda w: not paused(w),
        prepare=pause_first,
        viewer_status=403,
    ),
    Operation(
        "api",
        "scheduledtask-history",
        perm("view_scheduledtask"),
        lambda w: (
            "get",
            reverse("orchestrator:api-scheduled-task-history", args=[w.task.pk]),
            None,
        ),
        200,
    ),
    Operation(
        "api",
        "taskrun-cancel",
        perm("run_scheduledtask"),
        lambda w: ("post", reverse("orchestrator:api-run-cancel", args=[w.run.pk]), None),
        202,
        happened=cancelled,
        prepare=queue_the_run,
        viewer_status=403,
    ),
    Operation("api", "taskrun-list", perm("view_taskrun"), api("get", "api-run"), 200),
    Operation("api", "taskrun-retrieve", perm("view_taskrun"), api("get", "api-run", run_pk), 200),
    # The history is written by workers only: even every permission on runs cannot edit it.
    Operation(
        "api",
        "taskrun-create",
        perm("view_taskrun", "add_taskrun", "change_taskrun", "delete_taskrun"),
        api("post", "api-run", body={"status": "succeeded"}),
        405,
        viewer_status=403,
    ),
    Operation(
        "api",
        "taskrun-delete",
        perm("view_taskrun", "add_taskrun", "change_taskrun", "delete_taskrun"),
        api("delete", "api-run", run_pk),
        405,
        viewer_status=403,
    ),
]


def expected_status(operation: Operation, role: str) -> int:
    if role == "permitted":
        return operation.ok
    if operation.surface == "api":
        if role == "anonymous":
            return 401
        if role == "viewer" and operation.viewer_status is None:
            return 200  # reading is what viewing allows
        return 403
    if role == "anonymous":
        return 302  # to the admin login
    if role == "staff":
        return 403
    if operation.surface == "admin":
        return 200  # no action is offered to a viewer: the POST just shows the list again
    return operation.viewer_status or 403


def client_for(operation: Operation, user: User | None) -> Client | APIClient:
    client: Client | APIClient = APIClient() if operation.surface == "api" else Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: f"{op.surface}-{op.name}")
def test_permission_matrix(operation: Operation, role: str, world: World) -> None:
    operation.prepare(world)
    method, url, body = operation.request(world)
    client = client_for(operation, user_for(role, operation.perms))
    if operation.surface == "api":
        response = getattr(client, method)(url, body, format="json")
    else:
        response = getattr(client, method)(url, body or {})

    assert response.status_code == expected_status(operation, role), response.content[:300]
    if role == "anonymous" and operation.surface != "api":
        assert response["Location"].startswith(reverse("admin:login"))
    if operation.happened is not None:
        assert operation.happened(world) is (role == "permitted"), (
            "the permitted role had no effect" if role == "permitted" else "a refused role had one"
        )


def test_the_matrix_covers_every_action_and_endpoint() -> None:
    from orchestrator.admin import ScheduledTaskAdmin, TaskRunAdmin
    from orchestrator.api.urls import router
    from orchestrator.notifications.admin import NotificationChannelAdmin

    names = {(op.surface, op.name) for op in OPERATIONS}
    actions = (
        set(ScheduledTaskAdmin.actions)
        | set(NotificationChannelAdmin.actions)
        | set(TaskRunAdmin.actions)
    )
    assert {a.replace("_", "-") for a in actions} <= {n for s, n in names if s == "admin"}
    assert {"run", "run-with-arguments", "enable", "disable", "pause", "resume", "cancel"} <= {
        n for s, n in names if s == "dashboard"
    }
    prefixes = {prefix for prefix, _, _ in router.registry}
    assert prefixes == {"task-definitions", "scheduled-tasks", "runs", "channels"}


# --- run errors: one rule for the dashboard and the API ---------------------------------------

SECRET_ERROR = "refused by db.internal:5432 for user payroll"


def user_with(*perms: str) -> User:
    user = User.objects.create_user("-".join(perms) or "staff", password="pw", is_staff=True)
    for perm in perms:
        user.user_permissions.add(Permission.objects.get(codename=perm))
    return user


@pytest.mark.parametrize(
    ("perms", "sees_runs"),
    [
        (("view_scheduledtask",), False),
        (("change_scheduledtask",), False),
        (("view_scheduledtask", "view_taskrun"), True),
        (("view_scheduledtask", "change_taskrun"), True),
    ],
)
def test_run_errors_are_shown_by_the_same_rule_on_the_dashboard_and_in_the_api(
    perms: tuple[str, ...], sees_runs: bool
) -> None:
    task = make_scheduled_task("nightly", cron="0 3 * * *")
    make_run(task, status=TaskRun.Status.FAILED, error_message=SECRET_ERROR)
    user = user_with(*perms)
    assert access.can_view_runs(user) is sees_runs

    web = Client()
    web.force_login(user)
    pages = [
        web.get(reverse("orchestrator:dashboard")),
        web.get(reverse("orchestrator:task-detail", args=[task.pk])),
    ]
    assert [page.status_code for page in pages] == [200, 200]
    assert [SECRET_ERROR in page.content.decode() for page in pages] == [sees_runs, sees_runs]

    client = APIClient()
    client.force_authenticate(user)
    runs = client.get(reverse("orchestrator:api-run-list"))
    assert runs.status_code == (200 if sees_runs else 403)


def test_the_dashboard_and_the_api_ask_the_same_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    task = make_scheduled_task("nightly", cron="0 3 * * *")
    make_run(task, status=TaskRun.Status.FAILED, error_message=SECRET_ERROR)
    user = user_with("view_scheduledtask", "view_taskrun")
    asked: list[Any] = []

    def refuse(who: Any) -> bool:
        asked.append(who)
        return False

    monkeypatch.setattr("orchestrator.dashboard.views.can_view_runs", refuse)
    monkeypatch.setattr("orchestrator.api.permissions.can_view_runs", refuse)
    web = Client()
    web.force_login(user)
    page = web.get(reverse("orchestrator:task-detail", args=[task.pk]))
    assert SECRET_ERROR not in page.content.decode()
    client = APIClient()
    client.force_authenticate(user)
    assert client.get(reverse("orchestrator:api-run-list")).status_code == 403
    assert len(asked) == 2
