"""orchestrator's beat scheduler in-process: injected clocks, a recording producer, the real
database. Each wake-up is a call to ``tick()``, as Celery's beat loop makes it."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)
from django_celery_beat.schedulers import ModelEntry

from orchestrator.beat_sync import periodic_task_name
from orchestrator.models import BeatProcess, ScheduledTask, SchedulerLease
from orchestrator.scheduler.lease import LEASE_NAME, DatabaseNow
from orchestrator.scheduler.loader import RECONCILE_SECONDS
from tests.celery_app import app
from tests.scheduler.conftest import START, Clock
from tests.utils import make_definition, make_scheduled_task

pytestmark = pytest.mark.django_db
UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
T0 = START.replace(second=0)  # 12:00:00; the clock starts at 12:00:30


def tasks(count: int, **fields) -> list[ScheduledTask]:
    definition = make_definition()
    made = [
        make_scheduled_task(f"job-{i:05d}", definition=definition, **fields) for i in range(count)
    ]
    # They were created "just now" on the fake clock: every-minute tasks first fire at 12:01.
    PeriodicTask.objects.update(date_changed=START - dt.timedelta(seconds=1))
    return made


def row(task: ScheduledTask) -> PeriodicTask:
    return PeriodicTask.objects.get(name=periodic_task_name(task.pk))


def idle(scheduler, clock: Clock, seconds: float = 1.0) -> None:
    clock.advance(seconds)
    scheduler.tick()


def test_every_due_entry_is_sent_in_the_wake_up_where_it_falls_due(make_scheduler, clock):
    made = tasks(50)
    scheduler = make_scheduler()
    assert scheduler.tick() <= 1.0  # elected; nothing due before 12:01
    assert scheduler.sent == []

    clock.set(T0 + MINUTE)
    with CaptureQueriesContext(connection) as queries:
        scheduler.tick()

    assert len(scheduler.sent) == 50
    assert {tick for _, tick, *_ in scheduler.sent} == {T0 + MINUTE}
    assert {kwargs["scheduled_for"] for _, _, kwargs, _ in scheduler.sent} == {
        "2026-12-01T12:01:00+00:00"
    }
    # One statement writes every entry's last_run_at and total_run_count.
    updates = [q for q in queries if q["sql"].startswith("UPDATE") and "periodictask" in q["sql"]]
    assert len(updates) == 1
    assert set(
        PeriodicTask.objects.filter(name__in=[periodic_task_name(t.pk) for t in made]).values_list(
            "last_run_at", "total_run_count"
        )
    ) == {(T0 + MINUTE, 1)}
    # It sleeps until the next poll or the next tick, whichever comes first.
    assert 0 < scheduler._sleep_time() <= 1.0


def test_messages_carry_exactly_the_options_model_entry_forwards(make_scheduler, clock):
    crontab = CrontabSchedule.objects.create(minute="*", timezone="UTC")
    periodic = PeriodicTask.objects.create(
        name="reports",
        task="tests.sample_tasks.add",
        args=json.dumps([2]),
        kwargs=json.dumps({"b": 3}),
        crontab=crontab,
        queue="reports",
        exchange="reports-x",
        routing_key="reports.rk",
        priority=3,
        expire_seconds=90,
        headers=json.dumps({"team": "ops"}),
    )
    PeriodicTask.objects.update(date_changed=START)
    scheduler = make_scheduler()
    scheduler.tick()
    clock.set(T0 + MINUTE)
    scheduler.tick()

    ((name, _tick, kwargs, options),) = scheduler.sent
    expected = ModelEntry(PeriodicTask.objects.get(pk=periodic.pk), app=app).options
    expected["headers"]["celery_beat_task"] = True  # what Celery's own beat adds
    assert (name, kwargs, options) == ("reports", {"b": 3}, expected)
    assert options["expires"] == 90
    assert scheduler.entries[periodic.pk].args == [2]


@pytest.mark.parametrize("count", [5, 150])
def test_an_idle_wake_up_costs_the_same_few_queries_whatever_the_number_of_entries(
    make_scheduler, clock, count
):
    tasks(count)
    scheduler = make_scheduler()
    scheduler.tick()
    idle(scheduler, clock)
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            idle(scheduler, clock)

    # Per wake-up: the marker (with the database's clock), the lease; every 5 s, the heartbeat.
    assert len(queries) == 5 * 2 + 1, [q["sql"][:60] for q in queries]


def test_an_admin_edit_reloads_that_entry_only(make_scheduler, clock):
    made = tasks(120)
    scheduler = make_scheduler()
    scheduler.tick()
    idle(scheduler, clock)
    before = dict(scheduler.stats)

    edited = made[7]
    clock.advance(0.5)
    edited.queue = "urgent"
    edited.full_clean()
    edited.save()  # beat_sync in the same transaction bumps the marker
    with CaptureQueriesContext(connection) as queries:
        idle(scheduler, clock)

    assert scheduler.entries[row(edited).pk].options["queue"] == "urgent"
    assert scheduler.stats["full_loads"] == before["full_loads"] == 1
    assert scheduler.stats["entries_reloaded"] - before.get("entries_reloaded", 0) == 1
    # Marker, changed rows, enabled ids, four schedule tables, the lease: whatever N is.
    assert len(queries) <= 9, "\n".join(q["sql"][:90] for q in queries)


def test_deleted_and_disabled_rows_leave_the_schedule(make_scheduler, clock):
    first, second, third = tasks(3)
    scheduler = make_scheduler()
    scheduler.tick()
    first_pk, second_pk = row(first).pk, row(second).pk

    clock.advance(0.5)  # edits happen after the scheduler last looked
    first.delete()
    second.enabled = False
    second.save()
    idle(scheduler, clock)

    assert first_pk not in scheduler.entries and second_pk not in scheduler.entries
    assert row(third).pk in scheduler.entries
    clock.set(T0 + MINUTE)
    scheduler.tick()
    assert scheduler.names() == [periodic_task_name(third.pk)]


def test_an_in_place_schedule_edit_reaches_the_entries_that_use_it(make_scheduler, clock):
    crontab = CrontabSchedule.objects.create(minute="*", timezone="UTC")
    PeriodicTask.objects.create(name="a", task="tests.sample_tasks.noop", crontab=crontab)
    PeriodicTask.objects.create(name="b", task="tests.sample_tasks.noop", crontab=crontab)
    PeriodicTask.objects.update(date_changed=START)
    scheduler = make_scheduler()
    scheduler.tick()

    clock.advance(0.5)
    crontab.minute = "30"
    crontab.save()  # django-celery-beat's signal bumps the marker; no PeriodicTask changed
    idle(scheduler, clock)

    clock.set(T0 + MINUTE)
    scheduler.tick()
    assert scheduler.sent == []
    clock.set(T0 + 30 * MINUTE)
    scheduler.tick()
    assert sorted(scheduler.names()) == ["a", "b"]


def test_a_bulk_update_without_date_changed_is_caught_by_reconciliation(make_scheduler, clock):
    (task,) = tasks(1, cron="0 * * * *")
    scheduler = make_scheduler()
    scheduler.tick()
    pk = row(task).pk

    # Neither date_changed nor the marker: invisible to the cheap check.
    PeriodicTask.objects.filter(pk=pk).update(queue="elsewhere")
    idle(scheduler, clock)
    assert "queue" not in scheduler.entries[pk].options

    with CaptureQueriesContext(connection) as queries:
        idle(scheduler, clock, RECONCILE_SECONDS)
    assert scheduler.entries[pk].options["queue"] == "elsewhere"
    assert scheduler.stats["reconciles"] == 1
    # One query hashes every row in the database; one reads the row that differs.
    assert sum("MD5" in q["sql"].upper() for q in queries) == 2


def test_rows_enabled_behind_the_schedulers_back_are_loaded_at_the_next_change(
    make_scheduler, clock
):
    _first, second = tasks(2)
    PeriodicTask.objects.filter(pk=row(second).pk).update(enabled=False)
    scheduler = make_scheduler()
    scheduler.tick()
    assert row(second).pk not in scheduler.entries

    clock.advance(0.5)
    PeriodicTask.objects.filter(pk=row(second).pk).update(enabled=True)
    PeriodicTasks.update_changed()  # what bulk writers are asked to call
    idle(scheduler, clock)
    assert row(second).pk in scheduler.entries


@pytest.mark.parametrize(
    ("catch_up", "limit", "sent", "count"),
    [
        ("skip", 10, [], 0),
        ("once", 10, ["12:05"], 1),
        ("all", 10, ["12:01", "12:02", "12:03", "12:04", "12:05"], 5),
        ("all", 2, ["12:04", "12:05"], 2),
    ],
)
def test_after_an_outage_each_policy_sends_what_it_promises(
    make_scheduler, clock, catch_up, limit, sent, count
):
    (task,) = tasks(1, catch_up=catch_up, catch_up_limit=limit)
    PeriodicTask.objects.update(last_run_at=T0)  # it last ran at 12:00, then beat stopped
    clock.set(T0 + 5 * MINUTE + dt.timedelta(seconds=20))

    scheduler = make_scheduler()
    scheduler.tick()

    assert [tick.strftime("%H:%M") for _, tick, *_ in scheduler.sent] == sent
    assert [kwargs["scheduled_for"][11:16] for _, _, kwargs, _ in scheduler.sent] == sent
    periodic = row(task)
    # Every policy moves the entry past the outage.
    assert (periodic.last_run_at, periodic.total_run_count) == (T0 + 5 * MINUTE, count)
    clock.set(T0 + 6 * MINUTE)
    scheduler.sent.clear()
    scheduler.tick()
    assert [tick for _, tick, *_ in scheduler.sent] == [T0 + 6 * MINUTE]


def test_entries_that_are_not_scheduled_tasks_run_once_after_an_outage(make_scheduler, clock):
    crontab = CrontabSchedule.objects.create(minute="*", timezone="UTC")
    PeriodicTask.objects.create(
        name="plain", task="tests.sample_tasks.noop", crontab=crontab, last_run_at=T0
    )
    clock.set(T0 + 5 * MINUTE + dt.timedelta(seconds=20))
    scheduler = make_scheduler()
    scheduler.tick()

    assert [(name, tick) for name, tick, *_ in scheduler.sent] == [("plain", T0 + 5 * MINUTE)]
    assert scheduler.sent[0][2] == {}  # no tick stamped into other tasks' arguments


def test_a_publish_that_fails_is_tried_again_at_the_next_wake_up(make_scheduler, clock):
    made = tasks(3)
    scheduler = make_scheduler()
    scheduler.tick()
    scheduler.fail_after = 1  # the broker takes one message, then refuses
    clock.set(T0 + MINUTE)
    scheduler.tick()

    assert len(scheduler.sent) == 1
    written = list(PeriodicTask.objects.values_list("last_run_at", flat=True))
    assert written.count(None) == 2 and written.count(T0 + MINUTE) == 1

    scheduler.fail_after = None
    idle(scheduler, clock, 2)
    ticks = sorted((name, tick) for name, tick, *_ in scheduler.sent)
    assert ticks == sorted((periodic_task_name(t.pk), T0 + MINUTE) for t in made)


def stalling_pass(scheduler, clock, seconds_per_send: float, on_send=None) -> None:
    """Make each send take ``seconds_per_send`` (a stalled process), then send the 12:01 tick."""
    real_send = scheduler._send

    def slow_send(entry, tick, producer):
        clock.mono += seconds_per_send
        real_send(entry, tick, producer)
        if on_send is not None:
            on_send(len(scheduler.sent))

    scheduler._send = slow_send
    clock.set(T0 + MINUTE)
    clock.mono -= 59  # the wall clock jumped to the tick; the lease was renewed 1 s ago
    scheduler.lease._valid_until = clock.mono + 8
    scheduler._next_poll = clock.mono + 100  # no poll during this wake-up
    scheduler.tick()


def test_a_leader_whose_lease_was_taken_while_it_stalled_stops_between_chunks(
    make_scheduler, clock
):
    tasks(30)
    scheduler = make_scheduler()
    scheduler.chunk_size = 10
    scheduler.tick()

    def taken_over(sent: int) -> None:
        if sent == 15:  # the lease ran out while this process stalled, and a standby took it
            SchedulerLease.objects.filter(name=LEASE_NAME).update(
                owner="standby", expires_at=DatabaseNow() + dt.timedelta(seconds=10)
            )

    stalling_pass(scheduler, clock, 0.45, taken_over)

    # 4.5 s a chunk: the third chunk finds too little lease left, cannot renew it, and stops.
    assert len(scheduler.sent) == 20
    assert scheduler.stats["fenced"] == 10
    assert scheduler.lease.leader is False
    assert PeriodicTask.objects.filter(last_run_at=T0 + MINUTE).count() == 20
    assert PeriodicTask.objects.filter(last_run_at__isnull=True).count() == 10


def test_a_healthy_leader_renews_its_lease_during_a_long_pass(make_scheduler, clock):
    tasks(30)
    scheduler = make_scheduler()
    scheduler.chunk_size = 10
    scheduler.tick()

    stalling_pass(scheduler, clock, 0.45)

    assert len(scheduler.sent) == 30
    assert scheduler.stats["fenced"] == 0
    assert scheduler.lease.leader is True


def test_a_clocked_one_off_runs_once_then_is_disabled(make_scheduler, clock):
    clocked = ClockedSchedule.objects.create(clocked_time=T0 + 2 * MINUTE)
    periodic = PeriodicTask.objects.create(
        name="once", task="tests.sample_tasks.noop", clocked=clocked, one_off=True
    )
    scheduler = make_scheduler()
    scheduler.tick()
    clock.set(T0 + 2 * MINUTE - dt.timedelta(seconds=1))
    scheduler.tick()
    assert scheduler.sent == []

    clock.set(T0 + 2 * MINUTE)
    scheduler.tick()
    idle(scheduler, clock, 120)

    assert [(name, tick) for name, tick, *_ in scheduler.sent] == [("once", T0 + 2 * MINUTE)]
    periodic.refresh_from_db()
    assert (periodic.enabled, periodic.total_run_count) == (False, 0)
    assert periodic.pk not in scheduler.entries


def test_an_interval_with_a_start_time_first_runs_at_the_start_time(make_scheduler, clock):
    interval = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.create(
        name="later",
        task="tests.sample_tasks.noop",
        interval=interval,
        start_time=T0 + 5 * MINUTE,
    )
    scheduler = make_scheduler()
    scheduler.tick()
    clock.set(T0 + 4 * MINUTE)
    scheduler.tick()
    assert scheduler.sent == []

    clock.set(T0 + 5 * MINUTE)
    scheduler.tick()
    clock.set(T0 + 15 * MINUTE)
    scheduler.tick()
    assert [tick for _, tick, *_ in scheduler.sent] == [T0 + 5 * MINUTE, T0 + 15 * MINUTE]


def test_an_expired_entry_is_not_sent_and_is_disabled(make_scheduler, clock):
    crontab = CrontabSchedule.objects.create(minute="*", timezone="UTC")
    periodic = PeriodicTask.objects.create(
        name="until-noon-ish",
        task="tests.sample_tasks.noop",
        crontab=crontab,
        expires=T0 + 2 * MINUTE + dt.timedelta(seconds=30),
    )
    PeriodicTask.objects.update(date_changed=START)
    scheduler = make_scheduler()
    scheduler.tick()
    for minute in (1, 2, 3):
        clock.set(T0 + minute * MINUTE)
        scheduler.tick()

    assert [tick for _, tick, *_ in scheduler.sent] == [T0 + MINUTE, T0 + 2 * MINUTE]
    periodic.refresh_from_db()
    assert periodic.enabled is False


def test_a_new_leader_reads_last_run_at_fresh_and_sends_each_tick_once(make_scheduler, clock):
    tasks(4)
    first = make_scheduler()
    second = make_scheduler()
    first.tick()
    second.tick()
    assert (first.lease.leader, second.lease.leader) == (True, False)

    clock.set(T0 + MINUTE)
    first.tick()
    second.tick()
    assert len(first.sent) == 4 and second.sent == []

    # The leader dies: its lease runs out by the database's clock.
    SchedulerLease.objects.filter(name=LEASE_NAME).update(
        expires_at=DatabaseNow() - dt.timedelta(seconds=1)
    )
    clock.advance(30)
    second.tick()
    assert second.lease.leader and second.sent == []  # 12:01 was sent, and it knows
    clock.set(T0 + 2 * MINUTE)
    second.tick()
    assert {tick for _, tick, *_ in second.sent} == {T0 + 2 * MINUTE}
    assert len(second.sent) == 4


def test_a_standby_follows_edits_so_that_takeover_is_fast(make_scheduler, clock):
    (task,) = tasks(1)
    leader = make_scheduler()
    standby = make_scheduler()
    leader.tick()
    standby.tick()

    clock.advance(0.5)
    task.queue = "moved"
    task.full_clean()
    task.save()
    idle(standby, clock)
    assert standby.entries[row(task).pk].options["queue"] == "moved"
    assert standby.stats["full_loads"] == 1


def test_each_process_records_its_heartbeat_and_a_clean_stop_hands_over(make_scheduler, clock):
    tasks(1)
    leader = make_scheduler()
    standby = make_scheduler()
    leader.tick()
    standby.tick()
    roles = dict(BeatProcess.objects.values_list("ident", "role"))
    assert roles == {leader.process.ident: "leader", standby.process.ident: "standby"}

    leader.close()
    assert not BeatProcess.objects.filter(ident=leader.process.ident).exists()
    idle(standby, clock)
    assert standby.lease.leader is True


def test_the_celery_view_of_the_schedule_lists_the_entries_by_name(make_scheduler):
    (task,) = tasks(1)
    scheduler = make_scheduler()
    entry = scheduler.schedule[periodic_task_name(task.pk)]
    assert (entry.task, entry.args) == ("orchestrator.run_scheduled_task", [task.pk])


def test_a_sigterm_in_the_middle_of_a_wake_up_closes_on_the_way_out_not_in_the_handler(
    make_scheduler, monkeypatch
):
    # Celery beat's SIGTERM handler calls close() and raises SystemExit, then close() runs again
    # on the way out. A statement from the handler could wait for ever on psycopg's lock held by
    # the interrupted one; the handler's close writes nothing, the second one does it all.
    tasks(1)
    scheduler = make_scheduler()
    scheduler.tick()
    assert scheduler.lease.leader is True
    in_handler: list[int] = []

    def sigterm_during_send() -> None:
        with CaptureQueriesContext(connection) as queries:
            scheduler.close()  # what beat's handler does first
        in_handler.append(len(queries.captured_queries))
        raise SystemExit

    monkeypatch.setattr(scheduler, "_send_due", sigterm_during_send)
    with pytest.raises(SystemExit):
        scheduler.tick()
    assert in_handler == [0]
    assert BeatProcess.objects.filter(ident=scheduler.process.ident).exists()

    scheduler.close()  # Service.start's finally
    assert scheduler.lease.leader is False
    assert not BeatProcess.objects.filter(ident=scheduler.process.ident).exists()
    lease = SchedulerLease.objects.annotate(now=DatabaseNow()).get(name=LEASE_NAME)
    assert lease.expires_at < lease.now


def test_a_sigterm_in_the_middle_of_beats_own_sync_also_waits_for_the_way_out(
    make_scheduler, monkeypatch
):
    tasks(1)
    scheduler = make_scheduler()
    scheduler.tick()
    original_flush = scheduler._flush
    in_handler: list[int] = []

    def sigterm_during_flush() -> None:
        with CaptureQueriesContext(connection) as queries:
            scheduler.close()
        in_handler.append(len(queries.captured_queries))
        raise SystemExit

    monkeypatch.setattr(scheduler, "_flush", sigterm_during_flush)
    with pytest.raises(SystemExit):
        scheduler.sync()  # what beat's service loop calls every few minutes
    assert in_handler == [0]
    monkeypatch.setattr(scheduler, "_flush", original_flush)
    scheduler.close()
    assert scheduler.lease.leader is False
    assert not BeatProcess.objects.filter(ident=scheduler.process.ident).exists()
