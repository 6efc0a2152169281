"""Builders for test data (plain functions, no factory library)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Permission, User

from orchestrator import rollups
from orchestrator.models import (
    NotificationChannel,
    ScheduledTask,
    TaskDefinition,
    TaskRun,
    TaskState,
)


def make_definition(
    name: str = "noop", import_path: str = "tests.sample_tasks.noop", **fields: Any
) -> TaskDefinition:
    definition, _ = TaskDefinition.objects.get_or_create(
        name=name, defaults={"import_path": import_path, **fields}
    )
    return definition


def make_scheduled_task(
    name: str = "every-minute",
    import_path: str = "tests.sample_tasks.noop",
    *,
    definition: TaskDefinition | None = None,
    **fields: Any,
) -> ScheduledTask:
    """A ScheduledTask saved through full_clean() and save(), as the admin would."""
    if definition is None:
        definition = make_definition(name=import_path.rsplit(".", 1)[1], import_path=import_path)
    values: dict[str, Any] = {
        "name": name,
        "task_definition": definition,
        "cron": "* * * * *",
        "timezone": "UTC",
        "kwargs": {},
        "retry_jitter": False,
    }
    values.update(fields)
    task = ScheduledTask(**values)
    task.full_clean()
    task.save()
    return task


def make_run(task: ScheduledTask, **fields: Any) -> TaskRun:
    """A history row, written straight; the task's state follows the history, as the
    dispatcher keeps it."""
    values: dict[str, Any] = {"status": TaskRun.Status.SUCCEEDED, "attempt": 1}
    values.update(fields)
    run = TaskRun.objects.create(scheduled_task=task, **values)
    TaskState.objects.rebuild(task.pk)
    rollups.rebuild([task.pk])
    return run


def make_user(username: str, *perms: str, is_staff: bool = False) -> User:
    """A user holding ``perms`` ("app_label.codename"), with the password "pw"."""
    user = User.objects.create_user(username, password="pw", is_staff=is_staff)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def make_channel(
    name: str = "ops", kind: str = "email", target: str = "ops@example.com", **fields: Any
) -> NotificationChannel:
    channel = NotificationChannel(name=name, kind=kind, target=target, **fields)
    channel.full_clean()
    channel.save()
    return channel


def make_staff_user(username: str, *perms: str, is_staff: bool = True) -> User:
    """:func:`make_user`, staff by default (the dashboard and the admin want staff)."""
    return make_user(username, *perms, is_staff=is_staff)
