"""Beat stopped for three minutes: missed runs, one alert per channel, /health/ 503; after the
restart, the catch-up each policy promises. A real worker (with the watchdog's bootstep), real
beat processes with orchestrator's scheduler, Redis, PostgreSQL and an SMTP server."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orchestrator.models import NotificationDelivery, ScheduledTask, TaskRun
from tests.integration.conftest import wait_until
from tests.utils import make_channel, make_scheduled_task

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

NOTIFICATIONS = "notifications"
# Compressed timings: a pass every 3 s, a tick missed 15 s after it fell due, the scheduler
# stale after 15 s without a heartbeat.
WATCHDOG_ENV = {
    "ORCHESTRATOR_WATCHDOG_INTERVAL": "3",
    "ORCHESTRATOR_MISSED_RUN_GRACE": "15",
    "ORCHESTRATOR_SCHEDULER_STALE_AFTER": "15",
}


def ticks(task: ScheduledTask, status: str | None = None) -> list[dt.datetime]:
    runs = TaskRun.objects.filter(scheduled_task=task).exclude(status=TaskRun.Status.MISSED)
    if status:
        runs = runs.filter(status=status)
    return sorted(runs.values_list("scheduled_for", flat=True))


def health() -> tuple[int, str]:
    response = Client().get(reverse("orchestrator:health"))
    return response.status_code, response.json()["status"]


def test_beat_down_three_minutes_then_missed_runs_alerts_503_and_catch_up_on_restart(
    start_worker, start_beat, smtp_server
) -> None:
    mail = make_channel("ops-mail", kind="email", target="ops@example.com", is_default=True)
    also = make_channel("oncall-mail", kind="email", target="oncall@example.com", is_default=True)
    tasks = {
        policy: make_scheduled_task(
            f"catch-up-{policy}",
            "tests.sample_tasks.noop",
            cron="* * * * *",
            catch_up=policy,
            catch_up_limit=2,
        )
        for policy in ("skip", "once", "all")
    }
    start_worker(
        queues=["celery", NOTIFICATIONS],
        concurrency=2,
        DJANGO_SETTINGS_MODULE="tests.support.worker_settings",
        ORCHESTRATOR_NOTIFICATION_QUEUE=NOTIFICATIONS,
        **WATCHDOG_ENV,
        **smtp_server.env(),
    )
    beat = start_beat(**WATCHDOG_ENV)
    beat.wait_for_log("took the lease")
    # Each task runs once normally, then beat stops right after its tick.
    first = wait_until(lambda: ticks(tasks["all"]), timeout=90, interval=1)[0]
    wait_until(lambda: all(ticks(t) for t in tasks.values()), timeout=30)
    beat.stop()
    stopped_at = timezone.now()
    wait_until(lambda: health() == (503, "down"), timeout=60, interval=2, what="/health/ 503")

    # Three more ticks fall due while beat is down; each is missed once its grace is over.
    down_until = first + dt.timedelta(minutes=3, seconds=30)
    time.sleep(max(0.0, (down_until - timezone.now()).total_seconds()))
    missed_ticks = [first + dt.timedelta(minutes=n) for n in (1, 2, 3)]
    assert health() == (503, "down")

    beat = start_beat(**WATCHDOG_ENV)
    beat.wait_for_log("took the lease")
    wait_until(lambda: health() == (200, "ok"), timeout=60, interval=2, what="/health/ 200")
    # After the restart: skip runs none of the missed ticks, once the latest, all the latest two.
    wait_until(lambda: len(ticks(tasks["all"])) >= 3, timeout=60, interval=1)
    wait_until(lambda: len(ticks(tasks["once"])) >= 2, timeout=30, interval=1)
    time.sleep(3)  # anything wrongly sent has had time to arrive
    caught_up = {
        policy: [t for t in ticks(task) if first < t <= missed_ticks[-1]]
        for policy, task in tasks.items()
    }
    assert caught_up == {"skip": [], "once": missed_ticks[-1:], "all": missed_ticks[-2:]}

    # Each task's missed ticks are one missed run, alerted once per channel.
    for task in tasks.values():
        (row,) = TaskRun.objects.filter(scheduled_task=task, status=TaskRun.Status.MISSED)
        assert (row.scheduled_for, row.missed_until) == (missed_ticks[0], missed_ticks[-1])
        assert row.missed_count == 3
    deliveries = wait_until(
        lambda: list(NotificationDelivery.objects.filter(status="sent")) or None, timeout=30
    )
    deliveries = list(NotificationDelivery.objects.filter(status__in=["sent", "suppressed"]))
    missed = Counter(
        (d.channel_id, d.scheduled_task_id) for d in deliveries if d.event == "missed"
    )
    assert missed == {(c.pk, t.pk): 1 for c in (mail, also) for t in tasks.values()}
    scheduler = Counter(d.channel_id for d in deliveries if d.event == "scheduler")
    assert scheduler == {mail.pk: 2, also.pk: 2}  # stopped, then back
    assert stopped_at < max(d.created_at for d in deliveries)
    subjects = [str(m.message["Subject"]) for m in smtp_server.messages]
    assert sum(s.startswith("[orchestrator] SCHEDULER") for s in subjects) == 4
