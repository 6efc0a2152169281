"""Operations every edge calls: enable/disable and run now mean the same everywhere."""

from __future__ import annotations

from unittest import mock

import pytest
from django_celery_beat.models import PeriodicTask

from orchestrator import operations
from orchestrator.models import ScheduledTask
from tests.utils import make_scheduled_task

pytestmark = pytest.mark.django_db


def test_disabling_flips_the_flags_and_the_beat_entries_together() -> None:
    a, b = make_scheduled_task("a"), make_scheduled_task("b", enabled=False)

    result = operations.set_enabled(ScheduledTask.objects.all(), False)

    assert (result.changed, result.unchanged) == (1, 1)
    assert not ScheduledTask.objects.filter(enabled=True).exists()
    assert not PeriodicTask.objects.filter(
        name__in=[f"orchestrator:{a.pk}", f"orchestrator:{b.pk}"], enabled=True
    ).exists()


def test_a_queryset_filtered_on_the_flag_is_read_before_it_changes() -> None:
    make_scheduled_task("a", enabled=False)
    result = operations.set_enabled(ScheduledTask.objects.filter(enabled=False), True)
    assert result.changed == 1
    assert result.sync.updated == 1  # beat followed the task the filter no longer matches


def test_only_the_flag_is_written_so_a_concurrent_edit_is_kept() -> None:
    task = make_scheduled_task("a")
    ScheduledTask.objects.filter(pk=task.pk).update(description="edited meanwhile")
    operations.set_enabled([task.pk], False)
    task.refresh_from_db()
    assert (task.enabled, task.description) == (False, "edited meanwhile")


def test_nothing_changes_when_beat_cannot_follow() -> None:
    task = make_scheduled_task("a")
    with (
        mock.patch("orchestrator.beat_sync.beat_sync", side_effect=RuntimeError("db down")),
        pytest.raises(RuntimeError),
    ):
        operations.set_enabled([task.pk], False)
    task.refresh_from_db()
    assert task.enabled is True


def test_run_now_is_the_models_run_now() -> None:
    task = make_scheduled_task("a")
    with mock.patch("orchestrator.dispatcher.enqueue") as enqueue:
        task.run_now()
        operations.run_now(task, trigger="api")
    assert [c.kwargs["trigger"] for c in enqueue.call_args_list] == ["manual", "api"]
