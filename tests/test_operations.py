"""Operations every edge calls: enable/disable and run now mean the same everywhere."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from django_celery_beat.models import PeriodicTask

from orchestrator import operations
from orchestrator.models import ScheduledTask, TaskRun
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


def test_run_now_is_the_models_run_now(django_capture_on_commit_callbacks) -> None:
    task = make_scheduled_task("a")
    with (
        mock.patch("orchestrator.dispatcher.enqueue") as enqueue,
        django_capture_on_commit_callbacks(execute=True),
    ):
        task.run_now()
        operations.run_now(task, trigger="api")
    assert [c.kwargs["trigger"] for c in enqueue.call_args_list] == ["manual", "api"]


# --- pause, resume, run with arguments, cancel -------------------------------------------------


def test_a_pause_needs_a_reason_and_an_end_in_the_future() -> None:
    from django.core.exceptions import ValidationError
    from django.utils import timezone

    task = make_scheduled_task("a")
    with pytest.raises(ValidationError) as info:
        operations.pause([task], "  ")
    assert set(info.value.message_dict) == {"pause_reason"}
    with pytest.raises(ValidationError) as info:
        operations.pause([task], "window", until=timezone.now() - dt.timedelta(minutes=1))
    assert info.value.message_dict["paused_until"] == [
        "This time has passed; give a time in the future, or none."
    ]
    task.refresh_from_db()
    assert task.paused is False


def test_pause_and_resume_keep_the_schedule_and_record_who(django_user_model) -> None:
    from orchestrator import history

    user = django_user_model.objects.create_user("ops")
    task = make_scheduled_task("a")
    with history.changes_by(user, history.Source.DASHBOARD):
        assert operations.pause([task], "deploy freeze") == 1
        assert operations.resume(ScheduledTask.objects.all()) == 1
    task.refresh_from_db()
    assert (task.paused, task.pause_reason, task.enabled) == (False, "", True)
    entries = [history.describe(e) for e in history.entries_for(task)[:2]]
    assert [(e["changed_by"], e["source"]) for e in entries] == [
        ("ops", "dashboard"),
        ("ops", "dashboard"),
    ]
    assert entries[1]["changes"]["pause_reason"] == ["", "deploy freeze"]


def test_a_pause_that_has_ended_is_resumed_by_the_system() -> None:
    from django.utils import timezone

    task = make_scheduled_task("a")
    task.pause("window", until=timezone.now() + dt.timedelta(minutes=5))
    assert operations.resume_expired_pauses(timezone.now()) == 0
    assert operations.resume_expired_pauses(timezone.now() + dt.timedelta(minutes=6)) == 1
    task.refresh_from_db()
    assert task.paused is False


def test_run_now_with_kwargs_that_do_not_fit_is_refused_on_kwargs() -> None:
    from django.core.exceptions import ValidationError

    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    with pytest.raises(ValidationError) as info:
        operations.run_now(task, kwargs={"zzz": 2})
    assert "Unknown argument(s) zzz" in info.value.message_dict["kwargs"][0]
    with pytest.raises(ValidationError) as info:
        operations.run_now(task, kwargs=[1])
    assert "Enter a JSON object" in info.value.message_dict["kwargs"][0]
    assert not TaskRun.objects.exists()


def test_run_now_records_who_sent_it_and_its_kwargs(
    django_user_model, django_capture_on_commit_callbacks
) -> None:
    user = django_user_model.objects.create_user("ops")
    task = make_scheduled_task("add", "tests.sample_tasks.add", kwargs={"a": 1})
    with (
        mock.patch("orchestrator.dispatcher.enqueue") as enqueue,
        django_capture_on_commit_callbacks(execute=True),
    ):
        result = task.run_now(kwargs={"a": 5}, user=user)
    run = TaskRun.objects.get()
    assert (run.status, run.triggered_by, run.kwargs_override) == ("queued", user, {"a": 5})
    assert enqueue.call_args.kwargs == {
        "trigger": "manual",
        "task_id": result.id,
        "run_id": run.pk,
        "kwargs_override": {"a": 5},
        "triggered_by": user.pk,
    }


def test_a_run_the_broker_refused_is_marked_lost(django_capture_on_commit_callbacks) -> None:
    task = make_scheduled_task("a")
    with (
        mock.patch("orchestrator.dispatcher.enqueue", side_effect=ConnectionError("down")),
        pytest.raises(ConnectionError),
        django_capture_on_commit_callbacks(execute=True),
    ):
        task.run_now()
    run = TaskRun.objects.get()
    assert (run.status, run.error_message) == (
        "lost",
        "Could not send the run to the broker: ConnectionError",
    )


@pytest.mark.parametrize(
    ("status", "cancelled", "note"),
    [
        ("queued", True, "cancelled by ops"),
        ("running", True, "cancelled by ops"),
        ("retried", True, "retry dropped: cancelled by ops"),
        ("succeeded", False, ""),
        ("failed", False, ""),
        ("cancelled", False, ""),
    ],
)
def test_cancel_stops_what_has_not_finished_and_says_who(
    django_user_model, status: str, cancelled: bool, note: str
) -> None:
    from orchestrator.models import TaskRun as Run

    user = django_user_model.objects.create_user("ops")
    task = make_scheduled_task("a")
    run = Run.objects.create(scheduled_task=task, status=status, celery_task_id="c1")
    with mock.patch("celery.current_app.control.revoke") as revoke:
        assert run.cancel(user=user) is cancelled
    run.refresh_from_db()
    if cancelled:
        assert (run.status, run.cancelled_by, run.note) == ("cancelled", user, note)
        revoke.assert_called_once_with("c1", terminate=status == "running", signal="SIGTERM")
    else:
        assert run.status == status
        revoke.assert_not_called()
