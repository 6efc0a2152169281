"""Alert storm: a task failing for good 1,000 times in a minute, with one Slack channel.

Everything goes through the real path: the runs are published as beat would send them, a real
worker (Redis, PostgreSQL) runs them through the dispatcher, its signals apply the channel's
alert policy and queue deliveries on the notification queue, which the same worker consumes and
posts to a Slack look-alike on localhost (tests/support/fake_slack.py). The failures are paced
evenly over the window rather than dumped at once, so the delay measured is the alert path's,
not a backlog's. The storm is run once with the channel's default cooldown and once with
cooldown 0 (every failure alerted), the cost of having no suppression.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.env import SENT_BY_BENCH_CRON, table
from bench.processes import Worker
from tests.support.processes import purge_queues, wait_until

if TYPE_CHECKING:
    from tests.support.fake_slack import FakeSlack

RUN_QUEUE = "bench-storm"
NOTIFICATION_QUEUE = "bench-storm-notifications"
DEFAULT_COOLDOWN = 900  # NotificationChannel.cooldown's default


@dataclass
class StormResult:
    cooldown: int
    failures: int
    failure_span: float  # seconds from the first final failure to the last
    slack_messages: int  # requests the Slack look-alike answered 200 ok
    sent: int  # delivery rows "sent"
    suppressed: int  # delivery rows "suppressed"
    failed: int  # delivery rows "failed"
    delays: list[float]  # seconds from each alerted failure to its delivery


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: every value shown was observed)."""
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def _make_storm_task(fake_slack: FakeSlack, cooldown: int) -> tuple[int, str]:
    """A task that always fails, alerting one webhook channel; its id and the webhook's path."""
    from orchestrator.models import NotificationChannel, ScheduledTask, TaskDefinition

    tag = uuid.uuid4().hex[:8]
    path = f"/services/T0BENCH/B0{tag}/stormtoken{tag}"
    channel = NotificationChannel(
        name=f"storm-{cooldown}-{tag}",
        kind="slack",
        target=fake_slack.webhook_url(path),
        cooldown=cooldown,
    )
    channel.full_clean()
    channel.save()
    definition, _ = TaskDefinition.objects.get_or_create(
        name="bench-always-fails", defaults={"import_path": "tests.sample_tasks.always_fails"}
    )
    task = ScheduledTask(
        name=f"storm-{cooldown}-{tag}",
        task_definition=definition,
        cron=SENT_BY_BENCH_CRON,
        kwargs={"message": "warehouse database unreachable"},
        max_retries=0,  # every run is a final failure
        queue=RUN_QUEUE,
    )
    task.full_clean()
    task.save()
    task.notification_channels.set([channel])
    return task.pk, path


def _publish_paced(scheduled_task_id: int, count: int, window: float) -> None:
    from orchestrator.dispatcher import enqueue
    from orchestrator.models import ScheduledTask, TaskRun

    task = ScheduledTask.objects.get(pk=scheduled_task_id)
    start = time.monotonic()
    for i in range(count):
        delay = start + i * window / count - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        enqueue(task, trigger=TaskRun.Trigger.SCHEDULE)


def storm(fake_slack: FakeSlack, cooldown: int, failures: int, window: float) -> StormResult:
    from django.db.models import Max, Min

    from orchestrator.models import NotificationDelivery, TaskRun

    scheduled_task_id, path = _make_storm_task(fake_slack, cooldown)
    runs = TaskRun.objects.filter(scheduled_task_id=scheduled_task_id)
    deliveries = NotificationDelivery.objects.filter(scheduled_task_id=scheduled_task_id)
    _publish_paced(scheduled_task_id, failures, window)

    def done() -> bool:
        finished = runs.filter(status=TaskRun.Status.FAILED).count() >= failures
        return (
            finished
            and deliveries.count() >= failures
            and not deliveries.filter(status=NotificationDelivery.Status.PENDING).exists()
        )

    wait_until(done, timeout=120 + failures / 5, interval=0.25, what="the storm's deliveries")
    span = runs.aggregate(first=Min("finished_at"), last=Max("finished_at"))
    sent = list(
        deliveries.filter(status=NotificationDelivery.Status.SENT).select_related("task_run")
    )
    # Room for a wrongly sent extra message to arrive before counting what Slack got.
    time.sleep(0.5)
    slack = fake_slack.delivered(path)
    return StormResult(
        cooldown=cooldown,
        failures=runs.filter(status=TaskRun.Status.FAILED).count(),
        failure_span=(span["last"] - span["first"]).total_seconds(),
        slack_messages=len(slack),
        sent=len(sent),
        suppressed=deliveries.filter(status=NotificationDelivery.Status.SUPPRESSED).count(),
        failed=deliveries.filter(status=NotificationDelivery.Status.FAILED).count(),
        delays=[(d.sent_at - d.task_run.finished_at).total_seconds() for d in sent],
    )


def run(failures: int, window: float, cooldowns: list[int]) -> str:
    from django.conf import settings
    from django.db import connection

    import tests.celery_app  # noqa: F401  (the test project's app publishes the runs)
    from tests.support.fake_slack import FakeSlack

    fake_slack = FakeSlack()
    # The look-alike is on loopback over plain http: list it, here and in the worker.
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "WEBHOOK_ALLOWED_HOSTS": [
            *settings.ORCHESTRATOR.get("WEBHOOK_ALLOWED_HOSTS", []),
            fake_slack.allowed_host,
        ],
    }
    results = []
    purge_queues([RUN_QUEUE, NOTIFICATION_QUEUE])
    try:
        with Worker(
            queues=[RUN_QUEUE, NOTIFICATION_QUEUE],
            concurrency=2,
            db_name=connection.settings_dict["NAME"],
            settings="tests.support.worker_settings",
            env={"ORCHESTRATOR_NOTIFICATION_QUEUE": NOTIFICATION_QUEUE, **fake_slack.worker_env()},
        ):
            for cooldown in cooldowns:
                results.append(storm(fake_slack, cooldown, failures, window))
    finally:
        fake_slack.close()
    rows = [
        [
            f"{r.cooldown:,}" + (" (default)" if r.cooldown == DEFAULT_COOLDOWN else ""),
            r.failures,
            f"{r.failure_span:.1f}",
            r.slack_messages,
            r.sent,
            r.suppressed,
            r.failed,
            f"{percentile(r.delays, 0.50):.3f}" if r.delays else "-",
            f"{percentile(r.delays, 0.95):.3f}" if r.delays else "-",
            f"{max(r.delays):.3f}" if r.delays else "-",
        ]
        for r in results
    ]
    return table(
        [
            "channel cooldown s",
            "final failures",
            "within s",
            "Slack messages received",
            "deliveries sent",
            "suppressed",
            "failed",
            "failure → delivered p50 s",
            "p95 s",
            "max s",
        ],
        rows,
    )


def main(smoke: bool) -> str:
    if smoke:
        return run(failures=50, window=3.0, cooldowns=[DEFAULT_COOLDOWN, 0])
    return run(failures=1_000, window=60.0, cooldowns=[DEFAULT_COOLDOWN, 0])
