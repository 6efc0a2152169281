"""Statements compiled once and run again with new values give what the ORM gives."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import Value
from django.db.models.signals import post_save, pre_save
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from orchestrator.models import ScheduledTask, TaskRun, TaskState
from orchestrator.prepared import PreparedGet, PreparedInsert
from tests.utils import make_run, make_scheduled_task

pytestmark = pytest.mark.django_db

LOAD = PreparedGet(lambda: ScheduledTask.objects.select_related("task_definition", "state"))


def test_the_row_its_relations_and_their_values_match_the_querysets(
    django_assert_num_queries: Any,
) -> None:
    task = make_scheduled_task("a", "tests.sample_tasks.add", kwargs={"a": 1}, priority=7)
    make_run(task, status="failed")
    expected = ScheduledTask.objects.select_related("task_definition", "state").get(pk=task.pk)

    with django_assert_num_queries(1):
        loaded = LOAD.get(task.pk)
        assert loaded is not None
        definition, state = loaded.task_definition, loaded.state  # no further query

    fields = [f.attname for f in ScheduledTask._meta.concrete_fields]
    assert [getattr(loaded, f) for f in fields] == [getattr(expected, f) for f in fields]
    assert loaded.kwargs == {"a": 1}  # JSON decoded by the field's converter
    assert definition == expected.task_definition
    assert (state.last_final_status, state.consecutive_failures) == ("failed", 1)
    assert loaded._state.adding is False and loaded._state.db == "default"


def test_a_task_without_state_and_a_missing_task(django_assert_num_queries: Any) -> None:
    task = make_scheduled_task("b")
    loaded = LOAD.get(task.pk)
    assert loaded is not None
    with django_assert_num_queries(0), pytest.raises(TaskState.DoesNotExist):
        loaded.state  # noqa: B018
    assert LOAD.get(987_654) is None


def test_the_key_must_be_a_parameter_of_its_own() -> None:
    prepared = PreparedGet(lambda: ScheduledTask.objects.filter(pk=-7_340_033))
    with pytest.raises(ValueError, match="once"):
        prepared.get(1)


# --- PreparedInsert ---------------------------------------------------------------------------

INSERT_RUN = PreparedInsert(TaskRun)
COLUMNS = [f.attname for f in TaskRun._meta.concrete_fields if f.attname != "id"]


def run_values(task: ScheduledTask, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "scheduled_task": task,
        "status": TaskRun.Status.RUNNING,
        "started_at": timezone.now(),
        "celery_task_id": "c1",
        "kwargs_override": {"day": "2026-12-01"},
        "result": None,
    }
    values.update(fields)
    return values


def test_the_row_written_is_the_one_create_writes(django_assert_num_queries: Any) -> None:
    task = make_scheduled_task("a")
    values = run_values(task)

    with django_assert_num_queries(1):
        run = INSERT_RUN.create(**values)
    expected = TaskRun.objects.create(**values)

    assert run.pk is not None and run.pk != expected.pk
    assert run._state.adding is False and run._state.db == "default"
    stored = TaskRun.objects.values(*COLUMNS)
    assert stored.get(pk=run.pk) == stored.get(pk=expected.pk)
    assert [getattr(run, c) for c in COLUMNS] == [getattr(expected, c) for c in COLUMNS]
    # None in a JSON column is SQL NULL, as create() writes it.
    assert TaskRun.objects.filter(pk=run.pk, result__isnull=True).exists()


def test_the_insert_is_compiled_once_and_run_again_with_new_values() -> None:
    task = make_scheduled_task("b")
    prepared = PreparedInsert(TaskRun)
    with CaptureQueriesContext(connection) as queries:
        first = prepared.create(**run_values(task, attempt=1, result={"n": 1}))
        second = prepared.create(**run_values(task, attempt=2, note="again"))

    assert queries[0]["sql"].split(" VALUES ")[0] == queries[1]["sql"].split(" VALUES ")[0]
    assert len(prepared._compiled) == 1
    assert TaskRun.objects.get(pk=first.pk).result == {"n": 1}
    assert (TaskRun.objects.get(pk=second.pk).attempt, second.note) == (2, "again")


def test_the_model_signals_are_sent_as_save_sends_them() -> None:
    task = make_scheduled_task("c")
    seen: list[tuple[str, Any]] = []

    def before(sender: Any, instance: TaskRun, **kwargs: Any) -> None:
        seen.append(("pre_save", instance.pk))

    def after(sender: Any, instance: TaskRun, created: bool, **kwargs: Any) -> None:
        seen.append(("post_save", (instance.pk, created, kwargs["using"])))

    pre_save.connect(before, sender=TaskRun)
    post_save.connect(after, sender=TaskRun)
    try:
        run = INSERT_RUN.create(**run_values(task))
    finally:
        pre_save.disconnect(before, sender=TaskRun)
        post_save.disconnect(after, sender=TaskRun)

    assert seen == [("pre_save", None), ("post_save", (run.pk, True, "default"))]


def test_an_expression_goes_through_create() -> None:
    task = make_scheduled_task("d")
    run = INSERT_RUN.create(**run_values(task, attempt=Value(3)))
    assert TaskRun.objects.get(pk=run.pk).attempt == 3


def test_a_failed_insert_raises_djangos_error_and_marks_the_transaction() -> None:
    task = make_scheduled_task("e")
    INSERT_RUN.create(**run_values(task, tick_key="t1"))
    with transaction.atomic():
        with pytest.raises(IntegrityError):
            INSERT_RUN.create(**run_values(task, tick_key="t1"))
        # As after save(): no query until the block ends, then it is rolled back.
        assert connection.needs_rollback
        with pytest.raises(TransactionManagementError):
            TaskRun.objects.count()
    assert TaskRun.objects.filter(tick_key="t1").count() == 1


def test_an_unsaved_related_object_is_refused_as_save_refuses_it() -> None:
    task = make_scheduled_task("f")
    unsaved = ScheduledTask(name="unsaved", task_definition=task.task_definition)
    with pytest.raises(ValueError, match="unsaved related object"):
        INSERT_RUN.create(**run_values(unsaved))
    assert not TaskRun.objects.exists()


def test_a_key_given_by_the_caller_is_written() -> None:
    task = make_scheduled_task("g")
    run = INSERT_RUN.create(**run_values(task, id=4242))
    assert run.pk == 4242 and TaskRun.objects.filter(pk=4242).exists()
