"""Builders for test data (plain functions, no factory library)."""

from __future__ import annotations

from typing import Any

from orchestrator.models import NotificationChannel, ScheduledTask, TaskDefinition, TaskRun


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
    values: dict[str, Any] = {"status": TaskRun.Status.SUCCEEDED, "attempt": 1}
    values.update(fields)
    return TaskRun.objects.create(scheduled_task=task, **values)


def make_channel(
    name: str = "ops", kind: str = "email", target: str = "ops@example.com", **fields: Any
) -> NotificationChannel:
    channel = NotificationChannel(name=name, kind=kind, target=target, **fields)
    channel.full_clean()
    channel.save()
    return channel
