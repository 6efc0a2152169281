import json

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from orchestrator import beat_sync as beat_sync_module
from orchestrator.beat_sync import (
    MAINTENANCE_NAME,
    beat_sync,
    periodic_task_name,
)
from orchestrator.models import ScheduledTask
from orchestrator.task_names import RUN_MAINTENANCE, RUN_SCHEDULED_TASK
from tests.utils import make_definition, make_scheduled_task

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def redis_transport(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": "redis"}


def periodic_of(task: ScheduledTask) -> PeriodicTask:
    return PeriodicTask.objects.select_related("crontab").get(name=periodic_task_name(task.pk))


def last_change():
    return PeriodicTasks.objects.get(ident=1).last_update


def test_saving_a_task_writes_its_periodic_task():
    task = make_scheduled_task(
        "report",
        cron="30 6 * * mon-fri",
        timezone="Europe/Paris",
        queue="reports",
        priority=7,
        expires=300,
    )
    periodic = periodic_of(task)
    assert task.periodic_task_id == periodic.pk  # the saved instance is linked at once
    assert periodic.task == RUN_SCHEDULED_TASK
    assert json.loads(periodic.args) == [task.pk]
    assert json.loads(periodic.kwargs) == {}
    assert periodic.enabled is True
    assert periodic.queue == "reports"
    assert periodic.priority == 2  # Redis serves 0 first: 9 - 7
    assert periodic.expire_seconds == 300
    assert "report" in periodic.description
    crontab = periodic.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_month) == ("30", "6", "*")
    assert (crontab.month_of_year, crontab.day_of_week) == ("*", "mon-fri")
    assert str(crontab.timezone) == "Europe/Paris"


def test_rabbitmq_priorities_pass_through(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": "amqp"}
    task = make_scheduled_task("urgent", priority=9)
    assert periodic_of(task).priority == 9


def test_blank_queue_and_priority_use_the_defaults():
    periodic = periodic_of(make_scheduled_task("plain"))
    assert periodic.queue is None and periodic.priority is None


def test_equal_schedules_share_one_crontab_and_time_zones_do_not():
    a = make_scheduled_task("a", cron="0 * * * *", timezone="UTC")
    b = make_scheduled_task("b", cron="0 * * * *", timezone="UTC")
    c = make_scheduled_task("c", cron="0 * * * *", timezone="Asia/Tokyo")
    assert periodic_of(a).crontab_id == periodic_of(b).crontab_id
    assert periodic_of(c).crontab_id != periodic_of(a).crontab_id
    assert CrontabSchedule.objects.count() == 2


def test_a_second_sync_writes_nothing_and_does_not_wake_beat():
    for n in range(3):
        make_scheduled_task(f"t{n}")
    beat_sync()
    before = last_change()
    report = beat_sync()
    # The three tasks' rows and the maintenance entry.
    assert (report.created, report.updated, report.deleted, report.unchanged) == (0, 0, 0, 4)
    assert last_change() == before


def test_a_no_change_sync_costs_the_same_queries_for_3_or_30_tasks():
    def queries_for_resync() -> int:
        beat_sync()
        with CaptureQueriesContext(connection) as captured:
            beat_sync()
        return len(captured)

    for n in range(3):
        make_scheduled_task(f"small{n}")
    small = queries_for_resync()
    definition = make_definition("noop", "tests.sample_tasks.noop")
    ScheduledTask.objects.bulk_create(
        ScheduledTask(name=f"bulk{n}", task_definition=definition, cron="* * * * *")
        for n in range(27)
    )
    large = queries_for_resync()
    assert small == large
    assert large <= 6


def test_an_edited_schedule_moves_to_a_new_crontab_and_forgets_its_last_run():
    task = make_scheduled_task("moving", cron="0 * * * *")
    periodic = periodic_of(task)
    old_crontab = periodic.crontab_id
    PeriodicTask.objects.filter(pk=periodic.pk).update(last_run_at="2026-01-01T00:00:00Z")
    task.cron = "15 * * * *"
    task.full_clean()
    task.save()
    periodic = periodic_of(task)
    assert periodic.crontab.minute == "15"
    assert periodic.last_run_at is None
    assert not CrontabSchedule.objects.filter(pk=old_crontab).exists()


def test_a_shared_crontab_is_never_mutated_or_deleted_while_used():
    a = make_scheduled_task("a", cron="0 * * * *")
    b = make_scheduled_task("b", cron="0 * * * *")
    shared = periodic_of(a).crontab_id
    a.cron = "5 * * * *"
    a.save()
    assert periodic_of(b).crontab_id == shared
    assert CrontabSchedule.objects.get(pk=shared).minute == "0"


def test_disabling_a_task_or_its_definition_disables_the_periodic_task():
    task = make_scheduled_task("switch")
    task.enabled = False
    task.save()
    assert periodic_of(task).enabled is False
    task.enabled = True
    task.save()
    assert periodic_of(task).enabled is True
    definition = task.task_definition
    definition.enabled = False
    definition.save()
    assert periodic_of(task).enabled is False


def test_deleting_a_task_deletes_only_its_own_periodic_task():
    keep = make_scheduled_task("keep")
    gone = make_scheduled_task("gone")
    foreign_crontab = CrontabSchedule.objects.create(minute="1")
    foreign = PeriodicTask.objects.create(
        name="someone-else", task="other.task", crontab=foreign_crontab
    )
    gone.delete()
    assert not PeriodicTask.objects.filter(name=periodic_task_name(gone.pk)).exists()
    assert PeriodicTask.objects.filter(pk=periodic_of(keep).pk).exists()
    assert PeriodicTask.objects.filter(pk=foreign.pk).exists()


def test_full_sync_removes_owned_rows_whose_task_is_gone_and_nothing_else():
    crontab = CrontabSchedule.objects.create(minute="2")
    stale = PeriodicTask.objects.create(
        name=periodic_task_name(999_999), task=RUN_SCHEDULED_TASK, crontab=crontab
    )
    lookalike = PeriodicTask.objects.create(
        name=periodic_task_name(999_998), task="not.ours", crontab=crontab
    )
    report = beat_sync()
    assert report.deleted == 1
    assert not PeriodicTask.objects.filter(pk=stale.pk).exists()
    assert PeriodicTask.objects.filter(pk=lookalike.pk).exists()


def test_a_periodic_task_deleted_by_hand_is_recreated_and_the_task_kept():
    task = make_scheduled_task("resilient")
    beat_sync()
    periodic_of(task).delete()
    assert ScheduledTask.objects.filter(pk=task.pk).exists()
    report = beat_sync()
    assert (report.created, report.unchanged) == (1, 1)  # the maintenance entry is kept
    task.refresh_from_db()
    assert task.periodic_task_id == periodic_of(task).pk


def test_bulk_updates_sync_through_a_queryset_and_wake_beat_once():
    tasks = [make_scheduled_task(f"bulk{n}") for n in range(3)]
    before = last_change()
    queryset = ScheduledTask.objects.filter(pk__in=[t.pk for t in tasks])
    queryset.update(enabled=False)
    report = beat_sync(queryset)
    assert report.updated == 3
    assert last_change() > before
    assert not PeriodicTask.objects.filter(name__startswith="orchestrator:", enabled=True).exists()


def test_one_broken_row_is_skipped_and_reported_while_the_others_sync():
    good = make_scheduled_task("good")
    bad = make_scheduled_task("bad")
    ScheduledTask.objects.filter(pk=bad.pk).update(cron="99 * * * *")
    ScheduledTask.objects.filter(pk=good.pk).update(queue="fresh")
    report = beat_sync()
    assert [error.name for error in report.errors] == ["bad"]
    assert "minute" in report.errors[0].message
    assert periodic_of(good).queue == "fresh"
    assert PeriodicTask.objects.filter(name=periodic_task_name(bad.pk)).exists()


def test_dry_run_writes_nothing_and_prints_the_plan(capsys):
    task = make_scheduled_task("planned")
    ScheduledTask.objects.filter(pk=task.pk).update(queue="later")
    PeriodicTask.objects.filter(name=periodic_task_name(task.pk)).delete()
    call_command("beat_sync", "--dry-run")
    out = capsys.readouterr().out
    assert f"create {periodic_task_name(task.pk)} for planned" in out
    assert "create orchestrator:maintenance (* * * * * UTC)" in out
    assert "would have created 2" in out
    assert not PeriodicTask.objects.filter(name__startswith="orchestrator:").exists()


def test_command_reports_what_it_did(capsys):
    task = make_scheduled_task("cmd")
    beat_sync()
    PeriodicTask.objects.filter(name=periodic_task_name(task.pk)).delete()
    call_command("beat_sync")
    assert "created 1, updated 0, deleted 0, unchanged 1" in capsys.readouterr().out


def test_duplicate_crontab_rows_made_elsewhere_do_not_break_the_sync():
    for _ in range(2):
        CrontabSchedule.objects.create(
            minute="7",
            hour="*",
            day_of_month="*",
            month_of_year="*",
            day_of_week="*",
            timezone="UTC",
        )
    task = make_scheduled_task("dupes", cron="7 * * * *")
    assert periodic_of(task).crontab.minute == "7"
    assert beat_sync().unchanged == 1


@pytest.mark.parametrize(
    ("orchestrator_value", "top_level", "expected"),
    [(None, None, True), (False, None, False), (None, False, False), (True, False, True)],
)
def test_beat_start_runs_a_full_sync_when_startup_sync_is_on(
    settings, orchestrator_value, top_level, expected
):
    options = dict(settings.ORCHESTRATOR)
    if orchestrator_value is not None:
        options["STARTUP_TASK_SYNC"] = orchestrator_value
    settings.ORCHESTRATOR = options
    if top_level is not None:
        settings.STARTUP_TASK_SYNC = top_level
    task = make_scheduled_task("startup")
    PeriodicTask.objects.filter(name=periodic_task_name(task.pk)).delete()
    from celery.signals import beat_init

    beat_init.send(sender=None)
    assert PeriodicTask.objects.filter(name=periodic_task_name(task.pk)).exists() is expected
    assert PeriodicTask.objects.filter(name=MAINTENANCE_NAME).exists() is expected


def test_signals_are_connected_once():
    beat_sync_module.connect_signals()
    task = make_scheduled_task("once")
    assert PeriodicTask.objects.filter(name=periodic_task_name(task.pk)).count() == 1


# --- the maintenance entry ---------------------------------------------------------------------


def maintenance_entry() -> PeriodicTask:
    return PeriodicTask.objects.select_related("crontab").get(name=MAINTENANCE_NAME)


def test_a_full_sync_creates_the_maintenance_entry_every_minute_in_utc():
    report = beat_sync()
    assert report.created == 1
    entry = maintenance_entry()
    assert entry.task == RUN_MAINTENANCE == "orchestrator.run_maintenance"
    assert (json.loads(entry.args), json.loads(entry.kwargs)) == ([], {})
    assert entry.enabled is True
    assert (entry.queue, entry.priority, entry.expire_seconds) == (None, None, None)
    crontab = entry.crontab
    fields = (crontab.minute, crontab.hour, crontab.day_of_month, crontab.month_of_year)
    assert (*fields, crontab.day_of_week) == ("*",) * 5
    assert str(crontab.timezone) == "UTC"


def test_the_maintenance_entry_is_never_an_orphan_and_a_resync_leaves_it_alone():
    task = make_scheduled_task("neighbour")
    beat_sync()
    entry = maintenance_entry()
    before = last_change()
    report = beat_sync()
    assert (report.created, report.updated, report.deleted, report.unchanged) == (0, 0, 0, 2)
    assert maintenance_entry().date_changed == entry.date_changed
    assert last_change() == before
    task.delete()
    assert beat_sync().deleted == 0  # the task's row went with it; the entry stays
    assert maintenance_entry().pk == entry.pk


def test_per_task_syncs_never_create_or_touch_the_maintenance_entry():
    task = make_scheduled_task("solo")  # the save syncs this task only
    assert not PeriodicTask.objects.filter(name=MAINTENANCE_NAME).exists()
    beat_sync()
    PeriodicTask.objects.filter(name=MAINTENANCE_NAME).update(enabled=False)
    report = beat_sync(ScheduledTask.objects.filter(pk=task.pk))
    assert (report.created, report.updated, report.unchanged) == (0, 0, 1)
    assert maintenance_entry().enabled is False


def test_a_full_sync_repairs_a_maintenance_entry_edited_by_hand():
    beat_sync()
    other = CrontabSchedule.objects.create(minute="0", hour="3", timezone="UTC")
    PeriodicTask.objects.filter(name=MAINTENANCE_NAME).update(
        enabled=False, crontab=other, queue="elsewhere", last_run_at="2026-01-01T00:00:00Z"
    )
    report = beat_sync()
    assert (report.created, report.updated) == (0, 1)
    entry = maintenance_entry()
    assert (entry.enabled, entry.queue, entry.crontab.minute, entry.last_run_at) == (
        True,
        None,
        "*",
        None,
    )
    assert not CrontabSchedule.objects.filter(pk=other.pk).exists()  # nothing else used it


def test_the_maintenance_schedule_setting_moves_the_entry_and_none_removes_it(settings):
    beat_sync()
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "MAINTENANCE_SCHEDULE": "*/5 * * * *"}
    assert beat_sync().updated == 1
    assert maintenance_entry().crontab.minute == "*/5"
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "MAINTENANCE_SCHEDULE": None}
    before = last_change()
    assert beat_sync().deleted == 1
    assert not PeriodicTask.objects.filter(name=MAINTENANCE_NAME).exists()
    assert not CrontabSchedule.objects.filter(minute="*/5").exists()
    assert last_change() > before
    assert beat_sync().changed is False  # and it stays away


def test_an_invalid_maintenance_schedule_is_reported_and_the_tasks_still_sync(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "MAINTENANCE_SCHEDULE": "61 * * * *"}
    task = make_scheduled_task("unaffected")
    PeriodicTask.objects.filter(name=periodic_task_name(task.pk)).delete()
    report = beat_sync()
    assert [error.name for error in report.errors] == [MAINTENANCE_NAME]
    assert report.created == 1
    assert not PeriodicTask.objects.filter(name=MAINTENANCE_NAME).exists()


# --- rows are owned by name ---------------------------------------------------------------------

HAND_EDITS = {
    "task": "someone.elses.task",
    "args": "[1, 2]",
    "kwargs": '{"x": 1}',
    "enabled": False,
    "queue": "elsewhere",
    "one_off": True,
    "headers": '{"x": "y"}',
}


@pytest.mark.parametrize("edit", sorted(HAND_EDITS))
def test_a_periodic_task_edited_by_hand_is_restored_by_a_full_sync(edit):
    task = make_scheduled_task("owned")
    beat_sync()  # the maintenance entry too
    PeriodicTask.objects.filter(pk=periodic_of(task).pk).update(**{edit: HAND_EDITS[edit]})
    report = beat_sync()
    assert (report.errors, report.created, report.updated) == ([], 0, 1)
    periodic = periodic_of(task)
    assert (periodic.task, periodic.args, periodic.kwargs) == (
        RUN_SCHEDULED_TASK,
        json.dumps([task.pk]),
        "{}",
    )
    assert (periodic.enabled, periodic.queue, periodic.one_off, periodic.headers) == (
        True,
        None,
        False,
        "{}",
    )
    assert PeriodicTask.objects.filter(name=periodic_task_name(task.pk)).count() == 1


def test_a_periodic_task_whose_task_was_edited_is_restored_when_its_scheduled_task_is_saved():
    task = make_scheduled_task("owned")
    PeriodicTask.objects.filter(pk=periodic_of(task).pk).update(task="someone.elses.task")
    task.description = "saved again"
    task.save()
    assert periodic_of(task).task == RUN_SCHEDULED_TASK


def test_a_start_time_set_by_hand_is_cleared():
    import datetime as dt

    from django.utils import timezone

    task = make_scheduled_task("owned")
    beat_sync()
    later = timezone.now() + dt.timedelta(days=30)
    PeriodicTask.objects.filter(pk=periodic_of(task).pk).update(start_time=later)
    assert beat_sync().updated == 1
    assert periodic_of(task).start_time is None


def test_restoring_a_hand_edited_row_keeps_the_query_count_of_a_sync_with_changes():
    tasks = [make_scheduled_task(f"t{n}") for n in range(3)]
    beat_sync()

    def queries_to_restore(count: int) -> int:
        PeriodicTask.objects.filter(
            name__in=[periodic_task_name(t.pk) for t in tasks[:count]]
        ).update(task="someone.elses.task")
        with CaptureQueriesContext(connection) as captured:
            report = beat_sync()
        assert report.updated == count
        return len(captured)

    assert queries_to_restore(1) == queries_to_restore(3)
