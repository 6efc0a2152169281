from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from freezegun import freeze_time

from orchestrator import admin as orchestrator_admin
from orchestrator.models import (
    RetiredRunCount,
    ScheduledTask,
    TaskDefinition,
    TaskRun,
    TaskRunRollup,
)
from tests.utils import make_definition, make_run, make_scheduled_task, make_user

pytestmark = pytest.mark.django_db

SECRET = "s3cr3t-token-value"
TASKS_URL = reverse("admin:orchestrator_scheduledtask_changelist")
ADD_TASK_URL = reverse("admin:orchestrator_scheduledtask_add")
DEFINITIONS_URL = reverse("admin:orchestrator_taskdefinition_changelist")
ADD_DEFINITION_URL = reverse("admin:orchestrator_taskdefinition_add")
RUNS_URL = reverse("admin:orchestrator_taskrun_changelist")


@pytest.fixture(autouse=True)
def redis_transport(settings):
    # Priorities are converted for the broker when tasks sync to beat; pin the broker.
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": "redis"}


def change_url(obj: Any) -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])


def task_admin() -> orchestrator_admin.ScheduledTaskAdmin:
    return orchestrator_admin.ScheduledTaskAdmin(ScheduledTask, orchestrator_admin.admin.site)


def staff_client(*codenames: str) -> Client:
    user = User.objects.create_user("operator", password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="orchestrator", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def task_form_data(**overrides: Any) -> dict[str, Any]:
    """A valid add form for a scheduled task running tests.sample_tasks.add."""
    definition = make_definition("add", "tests.sample_tasks.add")
    data: dict[str, Any] = {
        "name": "nightly-add",
        "task_definition": definition.pk,
        "cron": "30 2 * * *",
        "timezone": "Europe/Paris",
        "enabled": "on",
        "description": "",
        "kwargs": '{"a": 1}',
        "max_retries": "3",
        "retry_backoff": "exponential",
        "retry_delay": "60",
        "retry_backoff_max": "3600",
        "retry_jitter": "on",
        "time_limit": "",
        "priority": "",
        "queue": "",
        "expires": "",
        "overlap": "allow",
        "catch_up": "once",
        "catch_up_limit": "10",
        "missed_grace": "",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def changelist_data(tasks: list[ScheduledTask], **changes: Any) -> dict[str, Any]:
    """The list_editable POST for ``tasks`` as listed, with ``changes`` applied to the first."""
    data: dict[str, Any] = {
        "form-TOTAL_FORMS": str(len(tasks)),
        "form-INITIAL_FORMS": str(len(tasks)),
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for index, task in enumerate(tasks):
        row = {
            "id": task.pk,
            "enabled": "on" if task.enabled else None,
            "max_retries": task.max_retries,
            "retry_backoff": task.retry_backoff,
            "retry_delay": task.retry_delay,
            "retry_backoff_max": task.retry_backoff_max,
            "retry_jitter": "on" if task.retry_jitter else None,
            "priority": "" if task.priority is None else task.priority,
            "queue": task.queue,
        }
        if index == 0:
            row.update(changes)
        for name, value in row.items():
            if value is not None:
                data[f"form-{index}-{name}"] = str(value)
    return data


def change_form_data(response: Any) -> dict[str, Any]:
    """The POST a browser would send back from a rendered change form, unchanged."""
    form = response.context["adminform"].form
    data: dict[str, Any] = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(value, bool):
            if value:
                data[name] = "on"
        elif isinstance(value, list):
            data[name] = [str(v) for v in value]
        else:
            data[name] = "" if value is None else field.widget.format_value(value) or value
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for name in formset.management_form.fields:
            data[formset.management_form.add_prefix(name)] = formset.management_form[name].value()
        for inline_form in formset.forms:
            for name in inline_form.fields:
                value = inline_form[name].value()
                data[inline_form.add_prefix(name)] = "" if value is None else str(value)
    data["_save"] = "Save"
    return data


def action_data(action: str, tasks: list[ScheduledTask]) -> dict[str, Any]:
    return {"action": action, "_selected_action": [str(t.pk) for t in tasks], "index": "0"}


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def sync_report(**counts: int) -> SimpleNamespace:
    values = {"created": 0, "updated": 0, "deleted": 0, "unchanged": 0, **counts}
    return SimpleNamespace(errors=[], **values)


# --- task definitions ---


def test_definition_changelist_counts_scheduled_tasks(admin_client):
    definition = make_definition("add", "tests.sample_tasks.add")
    make_scheduled_task("one", definition=definition, kwargs={"a": 1})
    make_scheduled_task("two", definition=definition, kwargs={"a": 2})
    make_definition("idle", "tests.sample_tasks.noop")

    response = admin_client.get(DEFINITIONS_URL)

    assert response.status_code == 200
    rows = {d.name: d.scheduled_task_total for d in response.context["cl"].result_list}
    assert rows == {"add": 2, "idle": 0}
    assert f"?task_definition__id__exact={definition.pk}" in response.content.decode()


def test_definition_change_form_renders(admin_client):
    definition = make_definition("add", "tests.sample_tasks.add")
    assert admin_client.get(change_url(definition)).status_code == 200
    assert admin_client.get(ADD_DEFINITION_URL).status_code == 200


@pytest.mark.parametrize(
    ("import_path", "message"),
    [
        ("os.system", "is not allowed"),
        ("tests.sample_tasks.system", "not an allowed module"),
        ("tests.sample_tasks.missing", "has no attribute"),
        ("tests.sample_tasks.not_callable", "is not callable"),
        ("not a path", "not a dotted import path"),
    ],
)
def test_definition_with_a_bad_import_path_is_refused_on_that_field(
    admin_client, import_path, message
):
    response = admin_client.post(
        ADD_DEFINITION_URL, {"name": "bad", "import_path": import_path, "enabled": "on"}
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["import_path"]
    assert message in errors["import_path"][0]
    assert not TaskDefinition.objects.exists()


def test_definition_with_an_allowed_import_path_is_saved(admin_client):
    response = admin_client.post(
        ADD_DEFINITION_URL,
        {"name": "add", "import_path": "tests.sample_tasks.add", "category": "maths"},
    )
    assert response.status_code == 302
    assert TaskDefinition.objects.get().category == "maths"


# --- scheduled tasks: forms and validation ---


def test_scheduled_task_add_form_renders_without_runs_inline(admin_client):
    response = admin_client.get(ADD_TASK_URL)
    assert response.status_code == 200
    assert response.context["inline_admin_formsets"] == []
    assert 'list="orchestrator-timezones"' in response.content.decode()


def test_valid_scheduled_task_is_saved_and_synced_to_beat(admin_client):
    response = admin_client.post(ADD_TASK_URL, task_form_data())

    assert response.status_code == 302, response.context["adminform"].form.errors
    task = ScheduledTask.objects.get()
    assert task.kwargs == {"a": 1}
    assert task.periodic_task is not None
    assert task.periodic_task.enabled is True


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"cron": "61 * * * *"}, "cron", "minute"),
        ({"cron": "* * * *"}, "cron", "5 fields"),
        ({"timezone": "Mars/Olympus"}, "timezone", "not a known time zone"),
        ({"kwargs": '{"b": 1}'}, "kwargs", "Missing required argument(s): a"),
        ({"kwargs": '{"a": 1, "c": 2}'}, "kwargs", "Unknown argument(s) c"),
        ({"kwargs": "[1, 2]"}, "kwargs", "JSON object"),
        ({"kwargs": "{not json"}, "kwargs", "valid JSON"),
        ({"priority": "10"}, "priority", "less than or equal to 9"),
        ({"retry_delay": "-5"}, "retry_delay", "greater than or equal to 0"),
        ({"max_retries": "101"}, "max_retries", "less than or equal to 100"),
        ({"queue": "bad queue!"}, "queue", "queue name"),
    ],
)
def test_invalid_scheduled_task_is_refused_on_the_right_field(
    admin_client, overrides, field, message
):
    response = admin_client.post(ADD_TASK_URL, task_form_data(**overrides))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert set(errors) == {field}, errors
    assert any(message in error for error in errors[field]), errors[field]
    assert not ScheduledTask.objects.exists()
    assert not PeriodicTask.objects.exists()


def test_change_form_shows_policy_kwargs_and_beat_link(admin_client):
    task = make_scheduled_task(
        "report",
        "tests.sample_tasks.echo",
        kwargs={"token": SECRET},
        max_retries=4,
        retry_backoff="exponential",
        retry_delay=60,
        retry_backoff_max=300,
        retry_jitter=False,
    )

    response = admin_client.get(change_url(task))

    page = response.content.decode()
    assert response.status_code == 200
    assert "1 min → 2 min → 4 min → 5 min (4 retries, 5 attempts at most)" in page
    assert SECRET in page  # the change form is where kwargs are edited
    task.refresh_from_db()
    assert (
        reverse("admin:django_celery_beat_periodictask_change", args=[task.periodic_task_id])
        in page
    )


def test_retry_schedule_says_when_there_is_no_retry():
    task = ScheduledTask(max_retries=0)
    text = task_admin().retry_schedule(task)
    assert text == "No retries: the first failure is final."


def test_long_retry_schedules_are_summarised():
    task = ScheduledTask(
        max_retries=30,
        retry_backoff="fixed",
        retry_delay=90,
        retry_backoff_max=3600,
        retry_jitter=True,
    )
    text = task_admin().retry_schedule(task)
    assert text.startswith("1 min 30 s → 1 min 30 s")
    assert "… 20 more, the last after 1 min 30 s (30 retries, 31 attempts at most)" in text
    assert text.endswith("with jitter each wait falls between half of it and all of it")


def test_recent_runs_inline_shows_the_latest_ten_and_links_to_the_history(admin_client):
    task = make_scheduled_task("report")
    other = make_scheduled_task("other")
    start = timezone.now() - dt.timedelta(hours=1)
    runs = [
        make_run(task, started_at=start + dt.timedelta(minutes=i), worker=f"w{i}")
        for i in range(12)
    ]
    make_run(other, started_at=timezone.now(), worker="other-worker")

    response = admin_client.get(change_url(task))

    (inline,) = response.context["inline_admin_formsets"]
    shown = [form.instance.pk for form in inline.formset.forms]
    assert shown == [run.pk for run in reversed(runs[2:])]
    page = response.content.decode()
    assert f"{RUNS_URL}?scheduled_task__id__exact={task.pk}" in page
    assert change_url(runs[-1]) in page
    assert change_url(runs[1]) not in page
    assert "other-worker" not in page


def test_saving_the_change_form_keeps_the_read_only_runs(admin_client):
    task = make_scheduled_task("report", max_retries=3)
    for _ in range(12):
        make_run(task, status=TaskRun.Status.FAILED)
    data = change_form_data(admin_client.get(change_url(task)))
    data["max_retries"] = "5"

    response = admin_client.post(change_url(task), data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    task.refresh_from_db()
    assert task.max_retries == 5
    assert TaskRun.objects.filter(scheduled_task=task).count() == 12


# --- scheduled tasks: list ---


def test_changelist_shows_schedule_and_last_run_but_never_kwargs(admin_client):
    task = make_scheduled_task(
        "report", "tests.sample_tasks.echo", cron="30 6 * * 1-5", kwargs={"token": SECRET}
    )
    make_run(task, status=TaskRun.Status.SUCCEEDED, started_at=timezone.now() - dt.timedelta(1))
    make_run(task, status=TaskRun.Status.FAILED, started_at=timezone.now())

    response = admin_client.get(TASKS_URL)

    page = response.content.decode()
    assert response.status_code == 200
    assert "At 06:30, Monday through Friday" in page
    (row,) = response.context["cl"].result_list
    assert row.last_run_status == TaskRun.Status.FAILED
    assert ">Failed</span>" in page
    assert SECRET not in page


def test_a_row_broken_in_the_database_does_not_break_the_pages(admin_client):
    task = make_scheduled_task("broken")
    make_scheduled_task("fine")
    ScheduledTask.objects.filter(pk=task.pk).update(cron="99 * * *", timezone="Nowhere/City")

    listing = admin_client.get(TASKS_URL)
    change = admin_client.get(change_url(task))

    assert listing.status_code == 200
    assert [row.name for row in listing.context["cl"].result_list] == ["broken", "fine"]
    assert "99 * * *" in listing.content.decode()
    assert change.status_code == 200


def test_changelist_search_does_not_look_into_kwargs(admin_client):
    make_scheduled_task("report", "tests.sample_tasks.echo", kwargs={"token": SECRET})
    response = admin_client.get(TASKS_URL, {"q": SECRET})
    assert list(response.context["cl"].result_list) == []


def test_changelist_filters_on_last_run_status(admin_client):
    failing = make_scheduled_task("failing")
    passing = make_scheduled_task("passing")
    make_scheduled_task("new")
    make_run(failing, status=TaskRun.Status.FAILED)
    make_run(passing, status=TaskRun.Status.SUCCEEDED)

    failed = admin_client.get(TASKS_URL, {"last_run_status": "failed"}).context["cl"]
    never = admin_client.get(TASKS_URL, {"last_run_status": "never"}).context["cl"]

    assert [t.name for t in failed.result_list] == ["failing"]
    assert [t.name for t in never.result_list] == ["new"]


def test_next_run_reads_disabled_tasks_and_definitions():
    definition = make_definition("off", "tests.sample_tasks.noop", enabled=False)
    task = make_scheduled_task("x", definition=definition)
    admin = task_admin()
    assert admin.next_run(task) == "definition disabled"
    task.enabled = False
    assert admin.next_run(task) == "disabled"


@freeze_time("2026-03-02 09:59:30")
def test_next_run_shows_the_time_in_the_task_zone_and_how_long_until_then():
    admin = task_admin()
    soon = make_scheduled_task("soon", cron="0 10 * * *", timezone="UTC")
    later = make_scheduled_task("later", cron="30 6 * * *", timezone="Europe/Paris")

    assert admin.next_run(soon) == (
        '<span style="white-space: nowrap;">2026-03-02 10:00 UTC</span>'
        "<br><small>in under a minute</small>"
    )
    assert admin.next_run(later) == (
        '<span style="white-space: nowrap;">2026-03-03 06:30 CET</span>'
        "<br><small>in 19\xa0hours, 30\xa0minutes</small>"
    )


def test_changelist_query_count_does_not_grow_with_the_number_of_tasks(admin_client):
    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(TASKS_URL)
        assert response.status_code == 200
        return len(queries)

    first = make_scheduled_task("task-0")
    make_run(first)
    one = count_queries()
    for i in range(1, 30):
        task = make_scheduled_task(f"task-{i}", definition=first.task_definition)
        make_run(task, status=TaskRun.Status.FAILED)
        make_run(task)

    assert count_queries() == one


def test_policy_fields_are_editable_from_the_list_and_reach_beat(admin_client):
    task = make_scheduled_task("report", priority=1, queue="")
    other = make_scheduled_task("other")

    response = admin_client.post(
        TASKS_URL,
        changelist_data([other, task][::-1], max_retries=7, priority=9, queue="urgent"),
    )

    assert response.status_code == 302
    task.refresh_from_db()
    assert (task.max_retries, task.priority, task.queue) == (7, 9, "urgent")
    periodic = PeriodicTask.objects.get(pk=task.periodic_task_id)
    assert (periodic.queue, periodic.priority) == ("urgent", 0)  # Redis serves 0 first


def test_invalid_list_edit_is_refused_on_its_row(admin_client):
    task = make_scheduled_task("report")

    response = admin_client.post(TASKS_URL, changelist_data([task], priority=10, retry_delay=-1))

    assert response.status_code == 200
    (form,) = response.context["cl"].formset.forms
    assert set(form.errors) == {"priority", "retry_delay"}
    task.refresh_from_db()
    assert task.priority is None
    assert task.retry_delay == 60


# --- scheduled tasks: actions ---


def test_run_now_sends_every_selected_task(admin_client):
    tasks = [make_scheduled_task("a"), make_scheduled_task("b")]

    with mock.patch.object(ScheduledTask, "run_now", autospec=True) as run_now:
        response = admin_client.post(TASKS_URL, action_data("run_now", tasks), follow=True)

    assert sorted(call.args[0].name for call in run_now.call_args_list) == ["a", "b"]
    assert "Sent 2 runs to the workers." in messages_of(response)


def test_run_now_warns_that_disabled_tasks_will_be_skipped(admin_client):
    off = make_definition("off", "tests.sample_tasks.noop", enabled=False)
    tasks = [
        make_scheduled_task("a", enabled=False),
        make_scheduled_task("b", definition=off),
        make_scheduled_task("c"),
    ]

    with mock.patch.object(ScheduledTask, "run_now", autospec=True):
        response = admin_client.post(TASKS_URL, action_data("run_now", tasks), follow=True)

    assert messages_of(response) == [
        "Sent 3 runs to the workers.",
        "Disabled, so the worker will skip them: a, b.",
    ]


def test_one_failing_run_now_does_not_stop_the_others(admin_client):
    tasks = [make_scheduled_task("a"), make_scheduled_task("b"), make_scheduled_task("c")]

    def send(task: ScheduledTask) -> None:
        if task.name == "a":
            raise ConnectionError("broker unreachable")

    with mock.patch.object(ScheduledTask, "run_now", autospec=True, side_effect=send) as run_now:
        response = admin_client.post(TASKS_URL, action_data("run_now", tasks), follow=True)

    assert run_now.call_count == 3
    assert messages_of(response) == [
        "Sent 2 runs to the workers.",
        "Could not send: a (ConnectionError: broker unreachable)",
    ]


def test_run_now_is_hidden_and_refused_without_the_run_permission():
    client = staff_client("view_scheduledtask", "change_scheduledtask")
    task = make_scheduled_task("a")

    listing = client.get(TASKS_URL)
    actions = [name for name, _ in listing.context["action_form"].fields["action"].choices]
    with mock.patch.object(ScheduledTask, "run_now", autospec=True) as run_now:
        client.post(TASKS_URL, action_data("run_now", [task]))

    assert "run_now" not in actions
    assert {"enable", "disable", "sync_to_beat"} <= set(actions)
    run_now.assert_not_called()


def test_run_now_is_allowed_with_the_run_permission():
    client = staff_client("view_scheduledtask", "run_scheduledtask")
    task = make_scheduled_task("a")

    listing = client.get(TASKS_URL)
    actions = [name for name, _ in listing.context["action_form"].fields["action"].choices]
    with mock.patch.object(ScheduledTask, "run_now", autospec=True) as run_now:
        client.post(TASKS_URL, action_data("run_now", [task]))

    # Running is not editing: the change actions stay hidden from a run-only operator.
    assert "run_now" in actions
    assert "enable" not in actions
    run_now.assert_called_once()


def test_disable_and_enable_flip_the_flags_and_resync_only_those_tasks(admin_client):
    a, b, c = (make_scheduled_task(name) for name in "abc")

    with mock.patch(
        "orchestrator.beat_sync.beat_sync", return_value=sync_report(updated=2)
    ) as sync:
        response = admin_client.post(TASKS_URL, action_data("disable", [a, b]), follow=True)

    assert list(ScheduledTask.objects.filter(enabled=True)) == [c]
    (queryset,) = sync.call_args.args
    assert sorted(t.name for t in queryset) == ["a", "b"]
    assert "Disabled 2 scheduled tasks (0 already disabled)." in messages_of(response)

    with mock.patch("orchestrator.beat_sync.beat_sync", return_value=sync_report()):
        admin_client.post(TASKS_URL, action_data("enable", [a]))
    assert sorted(ScheduledTask.objects.filter(enabled=True).values_list("name", flat=True)) == [
        "a",
        "c",
    ]


def test_enable_resyncs_tasks_selected_under_an_enabled_filter(admin_client):
    # The action's queryset is filtered on enabled=False; after the update it would match nothing.
    task = make_scheduled_task("a", enabled=False)

    with mock.patch("orchestrator.beat_sync.beat_sync", return_value=sync_report()) as sync:
        admin_client.post(f"{TASKS_URL}?enabled__exact=0", action_data("enable", [task]))

    (queryset,) = sync.call_args.args
    assert [t.name for t in queryset] == ["a"]


def test_disable_reaches_the_periodic_task(admin_client):
    task = make_scheduled_task("a")

    response = admin_client.post(TASKS_URL, action_data("disable", [task]), follow=True)

    task.refresh_from_db()
    assert task.enabled is False
    assert PeriodicTask.objects.get(pk=task.periodic_task_id).enabled is False
    assert messages_of(response) == ["Disabled 1 scheduled task (0 already disabled)."]

    admin_client.post(TASKS_URL, action_data("enable", [task]))
    assert PeriodicTask.objects.get(pk=task.periodic_task_id).enabled is True


def test_a_failing_beat_sync_leaves_the_flags_unchanged(admin_client):
    task = make_scheduled_task("a")

    with mock.patch("orchestrator.beat_sync.beat_sync", side_effect=RuntimeError("db down")):
        response = admin_client.post(TASKS_URL, action_data("disable", [task]), follow=True)

    task.refresh_from_db()
    assert task.enabled is True
    assert messages_of(response) == [
        "Nothing changed: updating beat failed (RuntimeError: db down)."
    ]


def test_sync_to_beat_recreates_a_deleted_periodic_task(admin_client):
    task = make_scheduled_task("a")
    task.refresh_from_db()
    PeriodicTask.objects.filter(pk=task.periodic_task_id).delete()

    response = admin_client.post(TASKS_URL, action_data("sync_to_beat", [task]), follow=True)

    task.refresh_from_db()
    assert task.periodic_task is not None
    assert messages_of(response) == ["Beat sync: 1 created, 0 updated, 0 deleted, 0 unchanged."]


def test_sync_to_beat_reports_rows_it_had_to_skip(admin_client):
    task = make_scheduled_task("a")
    ScheduledTask.objects.filter(pk=task.pk).update(cron="99 * * * *")  # a raw database edit

    response = admin_client.post(TASKS_URL, action_data("sync_to_beat", [task]), follow=True)

    text = messages_of(response)
    assert text[0] == "Beat sync: 0 created, 0 updated, 0 deleted, 0 unchanged."
    assert text[1].startswith(f"Beat sync: a (#{task.pk}): CronError")


# --- run history ---


def test_run_history_lists_runs_with_their_task(admin_client):
    task = make_scheduled_task("report")
    make_run(
        task,
        status=TaskRun.Status.RETRIED,
        attempt=2,
        max_attempts=4,
        error_type="ConnectionError",
        worker="celery@host",
        duration=dt.timedelta(seconds=3),
    )

    response = admin_client.get(RUNS_URL)

    page = response.content.decode()
    assert response.status_code == 200
    assert "2/4" in page
    assert "3 s" in page
    assert "Failed, retry scheduled" in page
    assert "celery@host" in page


@pytest.mark.parametrize(
    "query",
    [
        {"status__exact": "failed"},
        {"trigger__exact": "manual"},
        {"q": "ValueError"},
        {"q": "celery-id-1"},
        {"q": "report"},
    ],
)
def test_run_history_filters_and_search(admin_client, query):
    task = make_scheduled_task("report")
    other = make_scheduled_task("other")
    wanted = make_run(
        task,
        status=TaskRun.Status.FAILED,
        trigger=TaskRun.Trigger.MANUAL,
        error_message="ValueError: bad input",
        celery_task_id="celery-id-1",
    )
    make_run(other, status=TaskRun.Status.SUCCEEDED)

    response = admin_client.get(RUNS_URL, query)

    assert list(response.context["cl"].result_list) == [wanted]


def test_run_history_filters_by_task_and_date(admin_client):
    task = make_scheduled_task("report")
    other = make_scheduled_task("other")
    today = make_run(task)
    make_run(task, started_at=timezone.now() - dt.timedelta(days=40))
    make_run(other)

    response = admin_client.get(
        RUNS_URL,
        {
            "scheduled_task__id__exact": task.pk,
            "started_at__year": today.started_at.year,
            "started_at__month": today.started_at.month,
            "started_at__day": today.started_at.day,
        },
    )

    assert list(response.context["cl"].result_list) == [today]


def test_run_is_shown_read_only_with_its_traceback(admin_client):
    task = make_scheduled_task("report")
    run = make_run(
        task,
        status=TaskRun.Status.FAILED,
        traceback='Traceback:\n  File "<x>"\nRuntimeError: <script>alert(1)</script>',
        result={"rows": 3},
    )

    response = admin_client.get(change_url(run))

    page = response.content.decode()
    assert response.status_code == 200
    assert "<pre>Traceback:" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert 'name="_save"' not in page


def test_runs_cannot_be_added_or_changed(admin_client):
    task = make_scheduled_task("report")
    run = make_run(task, status=TaskRun.Status.FAILED)

    assert admin_client.get(reverse("admin:orchestrator_taskrun_add")).status_code == 403
    admin_client.post(change_url(run), {"status": "succeeded"})
    run.refresh_from_db()
    assert run.status == TaskRun.Status.FAILED


def test_deleting_a_run_takes_it_out_of_the_aggregates(admin_client, client):
    task = make_scheduled_task("report")
    run = make_run(task, status=TaskRun.Status.FAILED)
    viewer = make_user("viewer", "orchestrator.view_taskrun", is_staff=True)
    client.force_login(viewer)
    delete_url = reverse("admin:orchestrator_taskrun_delete", args=[run.pk])

    assert client.post(delete_url, {"post": "yes"}).status_code == 403  # no delete_taskrun
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 302

    assert not TaskRun.objects.exists()
    assert not TaskRunRollup.objects.filter(runs__gt=0).exists()
    assert RetiredRunCount.objects.get().runs == 1
    # Deleting (which forgets the runs in the aggregates) is offered to who may delete.
    actions = admin_client.get(RUNS_URL).context["action_form"].fields["action"].choices
    assert [name for name, _ in actions if name] == ["delete_selected", "cancel_runs"]


def test_run_history_query_count_does_not_grow_with_the_number_of_runs(admin_client):
    task = make_scheduled_task("report")
    make_run(task)

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(RUNS_URL).status_code == 200
        return len(queries)

    one = count_queries()
    for i in range(1, 30):
        make_run(make_scheduled_task(f"task-{i}", definition=task.task_definition))
    assert count_queries() == one


def test_definition_changelist_query_count_does_not_grow(admin_client):
    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(DEFINITIONS_URL).status_code == 200
        return len(queries)

    make_scheduled_task("task-0", "tests.sample_tasks.noop")
    one = count_queries()
    for i in range(1, 20):
        definition = make_definition(f"def-{i}", "tests.sample_tasks.noop")
        make_scheduled_task(f"task-{i}", definition=definition)
    assert count_queries() == one


# --- the notifications admin hook ---


def test_a_missing_notifications_package_is_tolerated():
    missing = ModuleNotFoundError("No module", name="orchestrator.notifications")
    with mock.patch("importlib.util.find_spec", side_effect=missing):
        assert orchestrator_admin._notifications_admin_exists() is False


def test_other_import_errors_from_the_notifications_package_surface():
    broken = ModuleNotFoundError("No module named 'slack_sdk'", name="slack_sdk")
    with (
        mock.patch("importlib.util.find_spec", side_effect=broken),
        pytest.raises(ModuleNotFoundError),
    ):
        orchestrator_admin._notifications_admin_exists()


def test_a_run_s_log_is_shown_read_only_escaped_and_monospace(admin_client):
    task = make_scheduled_task("billing")
    run = make_run(task, status="failed", log="INFO job: <script>alert(1)</script> & done\n")

    response = admin_client.get(reverse("admin:orchestrator_taskrun_change", args=[run.pk]))
    page = response.content.decode()
    assert '<pre class="orchestrator-run-log"' in page
    assert "INFO job: &lt;script&gt;alert(1)&lt;/script&gt; &amp; done" in page
    assert "<script>alert(1)</script>" not in page
    assert 'name="log"' not in page  # read-only: no input


def test_the_run_list_does_not_read_the_logs(admin_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_run(make_scheduled_task("billing"), status="succeeded", log="x" * 1000)
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(RUNS_URL).status_code == 200
    assert not any('"log"' in query["sql"] for query in queries.captured_queries)


def test_the_run_list_counts_at_most_its_cap(admin_client, monkeypatch):
    from orchestrator.admin import EstimatedCountPaginator

    task = make_scheduled_task("report")
    for _ in range(3):
        make_run(task)
    monkeypatch.setattr(EstimatedCountPaginator, "COUNT_CAP", 2)
    url = reverse("admin:orchestrator_taskrun_changelist")

    response = admin_client.get(url, {"status__exact": "succeeded"})

    assert response.status_code == 200
    assert response.context["cl"].result_count == 2  # capped, not counted to the end


def test_the_unfiltered_run_list_takes_the_databases_estimate(admin_client, monkeypatch):
    from orchestrator import admin as orchestrator_admin

    task = make_scheduled_task("report")
    make_run(task)
    monkeypatch.setattr(
        orchestrator_admin.rollups, "estimated_rows", lambda model, using=None: 12_345_678
    )

    response = admin_client.get(reverse("admin:orchestrator_taskrun_changelist"))

    assert response.context["cl"].result_count == 12_345_678
