"""Validation of definitions and scheduled tasks: a clear message on the right field."""

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from orchestrator.models import ScheduledTask, TaskDefinition
from tests.utils import make_definition, make_scheduled_task

pytestmark = pytest.mark.django_db


def errors_of(instance) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        instance.full_clean()
    return caught.value.message_dict


@pytest.mark.parametrize(
    ("import_path", "fragment"),
    [
        ("os.system", "is not allowed"),
        ("tests.sample_tasks.missing", "has no attribute"),
        ("tests.sample_tasks.not_callable", "not callable"),
        ("tests.sample_tasks.system", "not an allowed module"),
        ("tests.nope.fn", "is not allowed"),
        ("tests.sample_tasks.nomodule.fn", "cannot be imported"),
        ("not a path", "not a dotted import path"),
    ],
)
def test_definition_import_path_errors_name_the_field(import_path, fragment):
    errors = errors_of(TaskDefinition(name="x", import_path=import_path))
    assert list(errors) == ["import_path"]
    assert fragment in errors["import_path"][0]
    assert len(errors["import_path"]) == 1


def test_definition_with_allowed_function_is_valid():
    TaskDefinition(name="add", import_path="tests.sample_tasks.add").full_clean()


@override_settings(ORCHESTRATOR={"ALLOWED_TASK_MODULES": []})
def test_empty_allow_list_says_which_setting_to_fill():
    errors = errors_of(TaskDefinition(name="add", import_path="tests.sample_tasks.add"))
    assert "ALLOWED_TASK_MODULES" in errors["import_path"][0]


def scheduled(**overrides) -> ScheduledTask:
    values = {
        "name": "job",
        "task_definition": make_definition("add", "tests.sample_tasks.add"),
        "cron": "*/5 * * * *",
        "timezone": "UTC",
        "kwargs": {"a": 1},
    }
    values.update(overrides)
    return ScheduledTask(**values)


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"cron": "61 * * * *"}, "cron", "minute (0-59)"),
        ({"cron": "* * *"}, "cron", "5 fields"),
        ({"timezone": "Mars/Olympus"}, "timezone", "not a known time zone"),
        ({"timezone": "../../etc/passwd"}, "timezone", "not a known time zone"),
        ({"kwargs": [1, 2]}, "kwargs", "JSON object"),
        ({"kwargs": {}}, "kwargs", "Missing required argument(s): a"),
        ({"kwargs": {"a": 1, "zzz": 2}}, "kwargs", "Unknown argument(s) zzz"),
        ({"priority": 10}, "priority", "less than or equal to 9"),
        ({"priority": -1}, "priority", "greater than or equal to 0"),
        ({"max_retries": -1}, "max_retries", "greater than or equal to 0"),
        ({"retry_delay": -5}, "retry_delay", "greater than or equal to 0"),
        ({"retry_backoff_max": -5}, "retry_backoff_max", "greater than or equal to 0"),
        ({"expires": -5}, "expires", "greater than or equal to 0"),
        ({"retry_backoff": "quadratic"}, "retry_backoff", "not a valid choice"),
        ({"queue": "bad queue!"}, "queue", "queue name"),
        ({"time_limit": 0}, "time_limit", "greater than or equal to 1"),
        ({"catch_up": "twice"}, "catch_up", "not a valid choice"),
        ({"catch_up_limit": 0}, "catch_up_limit", "greater than or equal to 1"),
        ({"catch_up_limit": 1001}, "catch_up_limit", "less than or equal to 1000"),
        ({"missed_grace": 0}, "missed_grace", "greater than or equal to 1"),
    ],
)
def test_scheduled_task_errors_name_the_field_and_nothing_is_saved(overrides, field, fragment):
    errors = errors_of(scheduled(**overrides))
    assert field in errors, errors
    assert fragment in " ".join(errors[field])
    assert not ScheduledTask.objects.exists()


def test_kwargs_are_free_when_the_function_takes_var_kwargs():
    definition = make_definition("echo", "tests.sample_tasks.echo")
    scheduled(task_definition=definition, kwargs={"anything": [1, 2]}).full_clean()


def test_timezone_defaults_to_settings_time_zone(settings):
    settings.TIME_ZONE = "Europe/Paris"
    assert ScheduledTask().timezone == "Europe/Paris"


def test_a_definition_that_cannot_run_is_reported_on_the_task():
    broken = TaskDefinition.objects.create(name="broken", import_path="tests.sample_tasks.gone")
    errors = errors_of(scheduled(task_definition=broken, kwargs={}))
    assert list(errors) == ["task_definition"]
    assert "has no attribute 'gone'" in errors["task_definition"][0]


def test_retry_policy_is_built_from_the_fields():
    task = make_scheduled_task(
        "policy",
        "tests.sample_tasks.noop",
        max_retries=3,
        retry_backoff="linear",
        retry_delay=7,
        retry_backoff_max=15,
    )
    assert task.retry_policy().schedule() == [7, 14, 15]


def test_a_disabled_task_has_no_next_run():
    task = make_scheduled_task("off", enabled=False)
    assert task.next_run_at() is None
    task.enabled = True
    assert task.next_run_at() is not None
