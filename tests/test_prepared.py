"""A queryset compiled once and run again per key gives what the queryset gives."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.models import ScheduledTask, TaskState
from orchestrator.prepared import PreparedGet
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
