"""Bad input: every invalid value of every editable field is refused on its field, nothing saved.

The same table drives the admin's add and change forms and the API's create and update, so the
four edges are held to the same rule. Hypothesis then throws generated cron strings, time zones,
kwargs and names at ``full_clean()`` and ``beat_sync()``: only ValidationError may come out.
Huge values and control characters must be cut and escaped, never break a page, an email or a
Slack message; a row broken straight in the database is shown and reported, never a 500.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from orchestrator import dispatcher
from orchestrator.admin import ScheduledTaskForm
from orchestrator.beat_sync import beat_sync
from orchestrator.conf import conf
from orchestrator.models import NotificationChannel, ScheduledTask, TaskDefinition, TaskRun
from orchestrator.notifications import slack
from orchestrator.notifications.delivery import alert_from_run
from orchestrator.notifications.email import EmailChannel
from orchestrator.notifications.events import Report, ReportRow
from tests.utils import make_channel, make_definition, make_scheduled_task

pytestmark = pytest.mark.django_db

HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def redis_transport(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": "redis"}


# --- the table ----------------------------------------------------------------------------------

KEEP = object()  # "post the API value to the admin form as it is"


@dataclass(frozen=True)
class Bad:
    """One invalid value of one field, with what each edge must say about it.

    ``admin``/``api`` are fragments of the message expected on ``field``: they name the fix.
    ``form`` is the value as a browser posts it, when it differs from the API's JSON value.
    """

    field: str
    value: Any
    admin: str
    api: str | None = None
    form: Any = KEEP
    id: str = ""
    only: tuple[str, ...] = field(default=("admin", "api"))

    @property
    def api_fragment(self) -> str:
        return self.api if self.api is not None else self.admin

    def form_value(self) -> Any:
        if self.form is not KEEP:
            return self.form
        if isinstance(self.value, dict | list) and self.field == "kwargs":
            return json.dumps(self.value)
        return self.value


REQUIRED = ("This field is required", "This field may not be blank")
DEEP = json.loads("[" * 40 + "]" * 40)

TASK_CASES = [
    Bad("name", "", REQUIRED[0], REQUIRED[1], id="name-blank"),
    Bad("name", "x" * 201, "at most 200 characters", "no more than 200 characters", id="name-long"),
    Bad("name", "taken", "already exists", id="name-taken"),
    Bad("name", "a\x00b", "Null characters are not allowed", id="name-nul"),
    Bad("task_definition", None, REQUIRED[0], "may not be null", form="", id="def-missing"),
    Bad("task_definition", 999999, "Select a valid choice", "does not exist", id="def-unknown"),
    Bad("cron", "", REQUIRED[0], REQUIRED[1], id="cron-blank"),
    Bad("cron", "* * * *", "has 5 fields", id="cron-4-fields"),
    Bad("cron", "* * * * * *", "has 5 fields", id="cron-6-fields"),
    Bad("cron", "61 * * * *", "Invalid minute (0-59)", id="cron-minute"),
    Bad("cron", "0 24 * * *", "Invalid hour (0-23)", id="cron-hour"),
    Bad("cron", "*/0 * * * *", "step cannot be zero", id="cron-step-0"),
    Bad("cron", "0 0 31 2 *", "never occurs", id="cron-feb-31"),
    Bad("cron", "0 0 * * 7", "day of week (0-6 from Sunday", id="cron-dow-7"),
    Bad("cron", "0 0 * 13 *", "month (1-12 or jan-dec)", id="cron-month"),
    Bad("cron", "@daily", "has 5 fields", id="cron-macro"),
    Bad("timezone", "", REQUIRED[0], REQUIRED[1], id="tz-blank"),
    Bad("timezone", "Mars/Olympus", "Use an IANA name such as 'UTC'", id="tz-unknown"),
    Bad("timezone", "Europe", "Use an IANA name such as 'UTC'", id="tz-folder"),
    Bad("timezone", "../../etc/passwd", "Use an IANA name such as 'UTC'", id="tz-path"),
    Bad("timezone", "a" * 63, "Use an IANA name such as 'UTC'", id="tz-long"),
    Bad("kwargs", [1, 2], "Enter a JSON object", id="kwargs-list"),
    Bad("kwargs", "text", "Enter a JSON object", form='"text"', id="kwargs-string"),
    Bad(
        "kwargs",
        None,
        "Enter a valid JSON",
        form="{not json",
        id="kwargs-not-json",
        only=("admin",),
    ),
    Bad("kwargs", None, "got null", "may not be null", form="null", id="kwargs-null"),
    Bad("kwargs", {}, "Missing required argument(s): a", id="kwargs-missing"),
    Bad("kwargs", {"a": 1, "zzz": 2}, "Unknown argument(s) zzz", id="kwargs-unknown"),
    Bad("kwargs", {"a": "x\x00y"}, "Remove the NUL character", id="kwargs-nul"),
    Bad("kwargs", {"a": DEEP}, "nested too deeply (more than 32 levels)", id="kwargs-deep"),
    Bad(
        "kwargs",
        None,
        "nested too deeply",
        form="[" * 100_000 + "]" * 100_000,
        id="kwargs-recursion",
        only=("admin",),
    ),
    Bad("max_retries", -1, "greater than or equal to 0", id="retries-negative"),
    Bad("max_retries", 101, "less than or equal to 100", id="retries-101"),
    Bad(
        "max_retries",
        "many",
        "Enter a whole number",
        "A valid integer is required",
        id="retries-text",
    ),
    Bad("retry_backoff", "bogus", "Select a valid choice", "is not a valid choice", id="backoff"),
    Bad("retry_delay", -1, "greater than or equal to 0", id="delay-negative"),
    Bad("retry_backoff_max", -5, "greater than or equal to 0", id="backoff-max-negative"),
    Bad("priority", 10, "less than or equal to 9", id="priority-10"),
    Bad("priority", -1, "greater than or equal to 0", id="priority-negative"),
    Bad("queue", "bad queue!", "may contain only letters, digits", id="queue-chars"),
    Bad(
        "queue", "q" * 201, "at most 200 characters", "no more than 200 characters", id="queue-long"
    ),
    Bad("expires", -1, "greater than or equal to 0", id="expires-negative"),
    Bad("time_limit", 0, "greater than or equal to 1", id="time-limit-0"),
    Bad("catch_up", "twice", "Select a valid choice", "is not a valid choice", id="catch-up"),
    Bad("catch_up_limit", 0, "greater than or equal to 1", id="catch-up-limit-0"),
    Bad("catch_up_limit", 1001, "less than or equal to 1000", id="catch-up-limit-1001"),
    Bad("missed_grace", 0, "greater than or equal to 1", id="missed-grace-0"),
    Bad(
        "notification_channels", [999999], "Select a valid choice", "does not exist", id="channels"
    ),
    Bad(
        "retry_on",
        ["not a name!"],
        "'not a name!' is not an exception class name",
        form="ValueError, not a name!",
        id="retry-on-name",
    ),
    Bad(
        "retry_on",
        "ValueError",
        "Enter class names separated by commas, or a JSON list of them",
        "Enter a JSON list of exception class names",
        form="[",
        id="retry-on-not-a-list",
    ),
    Bad("never_retry_on", ["1Error"], "is not an exception class name", id="never-retry-name"),
    Bad(
        "never_retry_on",
        [None],
        "is not an exception class name",
        id="never-retry-null",
        only=("api",),
    ),
    Bad("overlap", "sometimes", "Select a valid choice", "is not a valid choice", id="overlap"),
    Bad("pause_after_failures", 0, "greater than or equal to 1", id="pause-after-0"),
]

DEFINITION_CASES = [
    Bad("name", "", REQUIRED[0], REQUIRED[1], id="name-blank"),
    Bad("name", "taken", "already exists", id="name-taken"),
    Bad("name", "n" * 201, "at most 200 characters", "no more than 200 characters", id="name-long"),
    Bad("import_path", "", REQUIRED[0], REQUIRED[1], id="path-blank"),
    Bad("import_path", "os.system", "Allowed module prefixes", id="path-os-system"),
    Bad("import_path", "builtins.eval", "Allowed module prefixes", id="path-builtins"),
    Bad(
        "import_path",
        "tests.sample_tasks..x",
        "Use the form 'package.module.function'",
        id="path-dots",
    ),
    Bad("import_path", ".noop", "Use the form 'package.module.function'", id="path-relative"),
    Bad("import_path", "noop", "Use the form 'package.module.function'", id="path-bare"),
    Bad(
        "import_path", "tests.sample_tasks.missing", "has no attribute 'missing'", id="path-missing"
    ),
    Bad(
        "import_path", "tests.sample_tasks.not_callable", "name a function", id="path-not-callable"
    ),
    Bad(
        "import_path",
        "tests.sample_tasks.system",
        "only callables defined in an allowed",
        id="path-reexport",
    ),
    Bad("import_path", "tests.sample_tasks.__class__", "private or special", id="path-dunder"),
    Bad("import_path", "tests.sample_tasks.nope.x", "cannot be imported", id="path-no-module"),
    Bad(
        "category",
        "c" * 101,
        "at most 100 characters",
        "no more than 100 characters",
        id="category-long",
    ),
]

CHANNEL_CASES = [
    Bad("name", "", REQUIRED[0], REQUIRED[1], id="name-blank"),
    Bad("name", "taken", "already exists", id="name-taken"),
    Bad("kind", "pigeon", "Select a valid choice", "is not a valid choice", id="kind"),
    Bad("target", "", REQUIRED[0], REQUIRED[1], id="target-blank"),
    Bad("target", "nobody", "Not a valid email address: nobody. Separate", id="email-bad"),
    Bad(
        "target",
        ",".join(f"u{i}@example.com" for i in range(51)),
        "Enter at most 50 addresses",
        id="email-too-many",
    ),
    Bad(
        "events",
        ["nope"],
        "Select a valid choice",
        "Unknown event(s) nope; choose among",
        id="events",
    ),
    Bad("events", "failure", "Enter a list of event names", only=("api",), id="events-string"),
    Bad("cooldown", -1, "greater than or equal to 0", id="cooldown"),
    Bad("alert_after_failures", 0, "greater than or equal to 1", id="threshold"),
]
SLACK_CHANNEL_CASES = [
    Bad("target", "not a channel!", "or a channel name such as #alerts", id="slack-name"),
    Bad("target", "https://hooks.slack.com", "Enter the full incoming-webhook URL", id="slack-url"),
]


def task_body(definition: TaskDefinition, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "nightly-add",
        "task_definition": definition.pk,
        "cron": "30 2 * * *",
        "timezone": "Europe/Paris",
        "enabled": True,
        "description": "",
        "kwargs": {"a": 1},
        "max_retries": 3,
        "retry_backoff": "exponential",
        "retry_delay": 60,
        "retry_backoff_max": 3600,
        "retry_jitter": True,
        "time_limit": None,
        "priority": None,
        "queue": "",
        "expires": None,
        "catch_up": "once",
        "catch_up_limit": 10,
        "missed_grace": None,
        "notification_channels": [],
        "overlap": "allow",
        "retry_on": [],
        "never_retry_on": [],
        "pause_after_failures": None,
    }
    body.update(changes)
    return body


def definition_body(**changes: Any) -> dict[str, Any]:
    body = {
        "name": "echo-def",
        "import_path": "tests.sample_tasks.echo",
        "category": "",
        "enabled": True,
    }
    body.update(changes)
    return body


def channel_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "mail",
        "kind": "email",
        "target": "ops@example.com",
        "events": ["failure", "recovery"],
        "enabled": True,
        "is_default": False,
        "cooldown": 900,
        "alert_after_failures": 1,
    }
    body.update(changes)
    return body


def as_form(body: dict[str, Any], case: Bad | None = None) -> dict[str, Any]:
    """The body as a browser posts it: booleans as "on" or absent, None as ""."""
    data: dict[str, Any] = {}
    for name, value in body.items():
        if case is not None and name == case.field:
            value = case.form_value()
        elif name == "kwargs":
            value = json.dumps(value)
        if value is True:
            data[name] = "on"
        elif value is False:
            continue
        elif value is None:
            data[name] = ""
        else:
            data[name] = value
    return data


def form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code  # re-shown, not redirected
    return dict(response.context["adminform"].form.errors)


def snapshot(model: type, pk: int) -> dict[str, Any]:
    return model.objects.filter(pk=pk).values().get()


def check_admin(client: Client, model: type, body: dict, case: Bad, existing: Any) -> None:
    opts = model._meta
    before = model.objects.count()
    add = client.post(reverse(f"admin:{opts.app_label}_{opts.model_name}_add"), as_form(body, case))
    errors = form_errors(add)
    assert case.field in errors, errors
    assert any(case.admin in message for message in errors[case.field]), errors[case.field]
    assert model.objects.count() == before

    state = snapshot(model, existing.pk)
    change = client.post(
        reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[existing.pk]),
        as_form(body, case),
    )
    errors = form_errors(change)
    assert any(case.admin in message for message in errors.get(case.field, [])), errors
    assert snapshot(model, existing.pk) == state


def check_api(client: APIClient, name: str, model: type, body: dict, case: Bad, existing: Any):
    before = model.objects.count()
    bad = {**body, case.field: case.value}
    created = client.post(reverse(f"orchestrator:{name}-list"), bad, format="json")
    assert created.status_code == 400, created.content
    errors = created.json()
    assert case.field in errors, errors
    assert any(case.api_fragment in message for message in errors[case.field]), errors
    assert model.objects.count() == before

    state = snapshot(model, existing.pk)
    patched = client.patch(
        reverse(f"orchestrator:{name}-detail", args=[existing.pk]),
        {case.field: case.value},
        format="json",
    )
    assert patched.status_code == 400, patched.content
    assert any(case.api_fragment in message for message in patched.json()[case.field])
    assert snapshot(model, existing.pk) == state


def surfaces(cases: list[Bad]) -> list[Any]:
    return [
        pytest.param(case, surface, id=f"{surface}-{case.id}")
        for case in cases
        for surface in case.only
    ]


@pytest.mark.parametrize(("case", "surface"), surfaces(TASK_CASES))
def test_every_invalid_scheduled_task_field_is_refused_on_that_field(
    case: Bad, surface: str, admin_web: Client, api: APIClient
) -> None:
    definition = make_definition("add", "tests.sample_tasks.add")
    make_scheduled_task("taken", definition=definition, kwargs={"a": 1})
    existing = make_scheduled_task("existing", definition=definition, kwargs={"a": 2})
    body = task_body(definition)
    if surface == "admin":
        check_admin(admin_web, ScheduledTask, body, case, existing)
    else:
        check_api(api, "api-scheduled-task", ScheduledTask, body, case, existing)


@pytest.mark.parametrize(("case", "surface"), surfaces(DEFINITION_CASES))
def test_every_invalid_task_definition_field_is_refused_on_that_field(
    case: Bad, surface: str, admin_web: Client, api: APIClient
) -> None:
    make_definition("taken", "tests.sample_tasks.noop")
    existing = make_definition("existing", "tests.sample_tasks.add")
    if surface == "admin":
        check_admin(admin_web, TaskDefinition, definition_body(), case, existing)
    else:
        check_api(api, "api-task-definition", TaskDefinition, definition_body(), case, existing)


@pytest.mark.parametrize(
    ("case", "surface"), surfaces(CHANNEL_CASES) + surfaces(SLACK_CHANNEL_CASES)
)
def test_every_invalid_channel_field_is_refused_on_that_field(
    case: Bad, surface: str, admin_web: Client, api: APIClient
) -> None:
    kind = "slack" if case in SLACK_CHANNEL_CASES else "email"
    target = "#alerts" if kind == "slack" else "ops@example.com"
    make_channel("taken")
    existing = make_channel("existing", kind=kind, target=target)
    body = channel_body(kind=kind, target=target)
    if surface == "admin":
        check_admin(admin_web, NotificationChannel, body, case, existing)
    else:
        check_api(api, "api-channel", NotificationChannel, body, case, existing)


def test_the_table_covers_every_editable_field() -> None:
    """A field added to a model without a bad-input case here fails this test."""
    covered = {case.field for case in TASK_CASES}
    # A checkbox has no bad value; the pause fields are checked together (a reason, an end in
    # the future) in tests/test_pause.py.
    editable = set(ScheduledTaskForm.Meta.fields) - {
        "enabled",
        "description",
        "retry_jitter",
        "paused",
        "pause_reason",
        "paused_until",
    }
    assert editable <= covered, editable - covered
    assert {"name", "import_path", "category"} <= {c.field for c in DEFINITION_CASES}
    channel_fields = {c.field for c in CHANNEL_CASES + SLACK_CHANNEL_CASES}
    assert {
        "name",
        "kind",
        "target",
        "events",
        "cooldown",
        "alert_after_failures",
    } <= channel_fields


def test_a_request_body_nested_past_the_recursion_limit_is_a_400(api: APIClient) -> None:
    body = '{"name": "deep", "kwargs": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = api.generic(
        "POST", reverse("orchestrator:api-scheduled-task-list"), body, "application/json"
    )
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["detail"]


def test_kwargs_with_names_that_are_not_text_are_refused_in_the_shell() -> None:
    definition = make_definition("echo", "tests.sample_tasks.echo")
    task = ScheduledTask(
        name="shell", task_definition=definition, cron="* * * * *", kwargs={1: "x"}
    )
    with pytest.raises(ValidationError) as raised:
        task.full_clean()
    assert "Argument names must be text" in str(raised.value.message_dict["kwargs"])


def test_an_emptied_kwargs_box_in_the_admin_means_no_arguments(admin_web: Client) -> None:
    definition = make_definition("echo", "tests.sample_tasks.echo")
    data = as_form(task_body(definition, kwargs={})) | {"kwargs": ""}
    response = admin_web.post(reverse("admin:orchestrator_scheduledtask_add"), data)
    assert response.status_code == 302
    assert ScheduledTask.objects.get(name="nightly-add").kwargs == {}


# --- hypothesis: generated input never crashes validation or beat_sync -------------------------

CRON_TOKENS = st.sampled_from(
    [
        "*",
        "*/5",
        "0",
        "59",
        "60",
        "1-5",
        "5-1",
        "1,2",
        "mon-fri",
        "jan",
        "sun",
        "L",
        "?",
        "-1",
        "1/0",
        "*/",
        ",",
        "٣",
        "0x1",
        "1e3",
        "*/999999999999",
        "\uff11",  # a full-width digit: int() accepts it
        "\x00",
        "0-",
        "-",
    ]
)


def json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    json_containers,
    max_leaves=12,
)


# Text a database column can hold (for rows written around validation, with update()).
STORABLE_CHARACTERS = st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")
STORABLE_TEXT = st.text(alphabet=STORABLE_CHARACTERS, max_size=80)


def assert_only_validation_errors(instance: Any) -> None:
    with contextlib.suppress(ValidationError):
        instance.full_clean()


@HYPOTHESIS
@given(
    expression=st.one_of(
        st.text(max_size=60),
        st.lists(CRON_TOKENS, min_size=4, max_size=6).map(" ".join),
    ),
    zone=st.one_of(
        st.text(max_size=70),
        st.sampled_from(["UTC", "Europe", "Etc", "Europe/Paris", "posix", "right/UTC", "Factory"]),
    ),
)
def test_generated_crons_and_zones_raise_only_validation_errors(db, expression: str, zone: str):
    definition = make_definition("noop", "tests.sample_tasks.noop")
    task = ScheduledTask(
        name="generated", task_definition=definition, cron=expression, timezone=zone
    )
    assert_only_validation_errors(task)
    # Whatever validation made of it, the display helpers survive it too.
    task.describe_schedule()
    task.pk = 1
    task.next_run_at()


@HYPOTHESIS
@given(kwargs=JSON, name=st.text(max_size=250))
def test_generated_kwargs_and_names_raise_only_validation_errors(db, kwargs: Any, name: str):
    definition = make_definition("add", "tests.sample_tasks.add")
    task = ScheduledTask(name=name, task_definition=definition, cron="* * * * *", kwargs=kwargs)
    assert_only_validation_errors(task)
    channel = NotificationChannel(name=name, kind="email", target=name, events=kwargs)
    assert_only_validation_errors(channel)
    path = TaskDefinition(name=name, import_path=name)
    assert_only_validation_errors(path)


@HYPOTHESIS
@given(text=st.text(max_size=400))
def test_generated_kwargs_text_in_the_admin_form_never_crashes(db, text: str):
    definition = make_definition("echo", "tests.sample_tasks.echo")
    form = ScheduledTaskForm(
        data=as_form(task_body(definition, kwargs={})) | {"kwargs": text},
    )
    # Every other field is valid: whatever the text, only kwargs may be refused.
    assert form.is_valid() or set(form.errors) == {"kwargs"}
    str(form["kwargs"])  # rendering the bound field again must not fail either


@HYPOTHESIS
@given(
    expression=st.one_of(
        st.text(max_size=40), st.lists(CRON_TOKENS, min_size=5, max_size=5).map(" ".join)
    ),
    zone=st.one_of(STORABLE_TEXT, st.sampled_from(["Europe", "UTC", "Asia/Tokyo"])),
)
def test_beat_sync_survives_any_row_edited_in_the_database(db, expression: str, zone: str):
    # The db fixture's transaction spans every example: build the rows once, edit them each time.
    task = ScheduledTask.objects.filter(name="target").first() or make_scheduled_task("target")
    if not ScheduledTask.objects.filter(name="healthy").exists():
        make_scheduled_task("healthy", cron="0 3 * * *")
    # PostgreSQL refuses NUL in text columns whatever orchestrator does: leave those out.
    expression = expression.replace("\x00", "")
    expression = expression.encode("utf-8", "replace").decode("utf-8")
    with transaction.atomic():
        ScheduledTask.objects.filter(pk=task.pk).update(cron=expression[:200], timezone=zone[:63])
        report = beat_sync()
    assert report.errors == [] or [e.name for e in report.errors] == ["target"]
    assert "healthy" not in {e.name for e in report.errors}


# --- huge values are cut and never break a page or a message -----------------------------------


def huge_failed_run(task: ScheduledTask, monkeypatch: pytest.MonkeyPatch, message: str) -> TaskRun:
    def explode(**kwargs: Any) -> None:
        raise RuntimeError(message)

    monkeypatch.setattr(TaskDefinition, "resolve", lambda self: explode)
    # Manual runs: a second scheduled run of the same tick would be dropped as a duplicate.
    outcome = dispatcher.run_task(dispatcher.Attempt(task.pk, trigger=TaskRun.Trigger.MANUAL))
    assert outcome.run is not None
    return outcome.run


def test_huge_kwargs_results_and_tracebacks_are_cut_and_every_page_still_renders(
    admin_web: Client, api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = "x" * 300_000
    task = make_scheduled_task(
        "huge", "tests.sample_tasks.echo", kwargs={"blob": big}, max_retries=0
    )
    # echo returns its 300 kB of kwargs as the result.
    ok = dispatcher.run_task(dispatcher.Attempt(task.pk, trigger=TaskRun.Trigger.MANUAL)).run
    assert ok is not None and ok.status == TaskRun.Status.SUCCEEDED
    assert isinstance(ok.result, str) and len(ok.result) <= conf.MAX_RESULT_CHARS
    failed = huge_failed_run(task, monkeypatch, "E" * 100_000)
    failed.refresh_from_db()
    assert len(failed.error_message) <= conf.MAX_ERROR_CHARS
    assert len(failed.traceback) <= conf.MAX_TRACEBACK_CHARS
    assert "characters cut" in failed.error_message

    pages = [
        admin_web.get(reverse("admin:orchestrator_scheduledtask_change", args=[task.pk])),
        admin_web.get(reverse("admin:orchestrator_scheduledtask_changelist")),
        admin_web.get(reverse("admin:orchestrator_taskrun_change", args=[ok.pk])),
        admin_web.get(reverse("admin:orchestrator_taskrun_change", args=[failed.pk])),
        admin_web.get(reverse("admin:orchestrator_taskrun_changelist")),
        admin_web.get(reverse("orchestrator:dashboard")),
        admin_web.get(reverse("orchestrator:task-detail", args=[task.pk])),
        api.get(reverse("orchestrator:api-scheduled-task-detail", args=[task.pk])),
        api.get(reverse("orchestrator:api-run-list")),
    ]
    assert [page.status_code for page in pages] == [200] * len(pages)
    # Pages that are not the task's own edit form show a bounded slice of the arguments.
    listing, overview, detail = pages[1], pages[5], pages[6]
    assert big not in listing.content.decode()
    assert big not in overview.content.decode()
    assert len(detail.content) < 100_000


def test_huge_errors_stay_within_slack_block_kit_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    task = make_scheduled_task("h" * 200, "tests.sample_tasks.noop", max_retries=0)
    run = huge_failed_run(task, monkeypatch, "<&>`" * 50_000)
    payload = slack.SlackChannel("#alerts").payload(alert_from_run("failure", run))
    json.dumps(payload)
    for block in payload["blocks"]:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
        if "text" in block and block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
        for item in block.get("fields", []):
            assert len(item["text"]) <= 2000  # Block Kit's limit per field
    assert len(payload["text"]) <= 40_000


# --- control characters and undecodable bytes in error messages -------------------------------

NASTY = (
    "NUL\x00 CRLF\r\nBcc: victim@example.com\r\n ANSI\x1b[31mred\x1b[0m <script>alert(1)</script>"
)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(NASTY, id="control-characters"),
        pytest.param(b"\xff\xfe bytes".decode("utf-8", "surrogateescape"), id="surrogates"),
        pytest.param(b"\xff\xfe raw bytes", id="bytes"),
    ],
)
def test_control_characters_and_bad_bytes_are_stored_and_shown_escaped(
    message: Any, admin_web: Client, monkeypatch: pytest.MonkeyPatch, mailoutbox: list
) -> None:
    task = make_scheduled_task("weird\r\nSubject: forged", "tests.sample_tasks.noop", max_retries=0)
    run = huge_failed_run(task, monkeypatch, message)
    run.refresh_from_db()
    assert run.status == TaskRun.Status.FAILED
    assert "\x00" not in run.error_message and "\x00" not in run.traceback
    run.error_message.encode("utf-8")  # storable as UTF-8 text
    run.traceback.encode("utf-8")

    for url in (
        reverse("admin:orchestrator_taskrun_change", args=[run.pk]),
        reverse("orchestrator:task-detail", args=[task.pk]),
        reverse("orchestrator:dashboard"),
    ):
        page = admin_web.get(url)
        assert page.status_code == 200
        assert b"<script>alert(1)</script>" not in page.content

    alert = alert_from_run("failure", run)
    EmailChannel("ops@example.com").notify(alert)
    (email,) = mailoutbox
    assert "\r" not in email.subject and "\n" not in email.subject
    assert "Subject: forged" in email.subject  # kept as text, on the one subject line
    headers = email.message()
    assert headers["Bcc"] is None
    assert len(headers.get_all("Subject")) == 1
    json.dumps(slack.SlackChannel("#alerts").payload(alert))


# --- one broken row never stops the others -----------------------------------------------------

BROKEN_ROWS = [
    pytest.param({"cron": "99 * * *"}, id="cron"),
    pytest.param({"timezone": "Nowhere/City"}, id="timezone-unknown"),
    pytest.param({"timezone": "Europe"}, id="timezone-folder"),
    pytest.param({"cron": "", "timezone": ""}, id="blank"),
    pytest.param({"retry_backoff": "bogus"}, id="backoff"),
    pytest.param({"kwargs": [1, 2]}, id="kwargs-list"),
    pytest.param({"priority": 99}, id="priority"),
]


@pytest.mark.parametrize("breakage", BROKEN_ROWS)
def test_a_row_broken_in_the_database_is_shown_and_reported_never_a_500(
    breakage: dict, admin_web: Client, api: APIClient
) -> None:
    broken = make_scheduled_task("broken")
    make_scheduled_task("fine", cron="0 3 * * *")
    ScheduledTask.objects.filter(pk=broken.pk).update(**breakage)

    report = beat_sync()
    assert "fine" not in {error.name for error in report.errors}

    pages = {
        "admin list": admin_web.get(reverse("admin:orchestrator_scheduledtask_changelist")),
        "admin change": admin_web.get(
            reverse("admin:orchestrator_scheduledtask_change", args=[broken.pk])
        ),
        "dashboard": admin_web.get(reverse("orchestrator:dashboard")),
        "dashboard task": admin_web.get(reverse("orchestrator:task-detail", args=[broken.pk])),
        "api list": api.get(reverse("orchestrator:api-scheduled-task-list")),
        "api detail": api.get(reverse("orchestrator:api-scheduled-task-detail", args=[broken.pk])),
    }
    assert {name: page.status_code for name, page in pages.items()} == dict.fromkeys(pages, 200)
    assert "broken" in pages["admin list"].content.decode()
    assert "broken" in pages["dashboard"].content.decode()
    names = [row["name"] for row in pages["api list"].json()["results"]]
    assert names == ["broken", "fine"]


@pytest.mark.parametrize("name", ["category", "queue", "status", "enabled"])
@pytest.mark.parametrize("value", ["\x00", "<script>x</script>", "a" * 5000])
def test_dashboard_filters_with_odd_values_show_the_page(
    admin_web: Client, name: str, value: str
) -> None:
    make_scheduled_task("task")
    page = admin_web.get(reverse("orchestrator:dashboard"), {name: value})
    assert page.status_code == 200
    assert b"<script>x</script>" not in page.content


def test_beat_sync_reports_a_broken_timezone_by_name() -> None:
    broken = make_scheduled_task("broken")
    make_scheduled_task("fine")
    ScheduledTask.objects.filter(pk=broken.pk).update(timezone="Europe")
    report = beat_sync(dry_run=True)
    (error,) = report.errors
    assert error.name == "broken"
    assert "Europe" in error.message


def test_a_huge_failure_report_stays_within_slack_block_kit_limits() -> None:
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    rows = tuple(
        ReportRow(
            task_name="<&>" * 70,
            runs=10,
            failures=10,
            last_error="`<&>`\r\n" * 5000,
            last_error_at=now,
            url="http://testserver/admin/" + "x" * 100,
        )
        for _ in range(50)
    )
    report = Report(since=now, until=now, period="24h\r\n" * 100, rows=rows, total_runs=500)
    payload = slack.SlackChannel("#alerts").payload(report)
    json.dumps(payload)
    header, *sections = payload["blocks"]
    assert len(header["text"]["text"]) <= 150
    for block in sections:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
    assert len(payload["blocks"]) <= 50  # Block Kit's limit per message
    assert len(payload["text"]) <= 40_000


@pytest.mark.parametrize("bad", ["nul\x00name", "lone\ud800surrogate"])
def test_names_the_database_cannot_store_are_refused_by_the_model(db, bad: str):
    definition = make_definition("noop", "tests.sample_tasks.noop")
    for instance in (
        ScheduledTask(name=bad, task_definition=definition, cron="* * * * *"),
        TaskDefinition(name=bad, import_path="tests.sample_tasks.noop"),
        NotificationChannel(name=bad, kind="email", target="ops@example.com"),
    ):
        with pytest.raises(ValidationError) as caught:
            instance.full_clean()
        assert "name" in caught.value.message_dict
