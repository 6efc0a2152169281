"""beat_sync at scale: initial sync, no-change re-sync, one edit, against a naive save() loop."""

from __future__ import annotations

import json

from bench.env import Measurement, measure, table


def _make_tasks(n: int) -> None:
    from orchestrator.models import ScheduledTask, TaskDefinition

    definition = TaskDefinition.objects.create(
        name=f"noop-{n}", import_path="tests.sample_tasks.noop"
    )
    crons = ["* * * * *", "*/5 * * * *", "0 * * * *", "30 6 * * mon-fri", "0 0 1 * *"]
    # bulk_create sends no signal: the tasks exist, their PeriodicTasks do not yet.
    ScheduledTask.objects.bulk_create(
        ScheduledTask(
            name=f"task-{n}-{i}",
            task_definition=definition,
            cron=crons[i % len(crons)],
            timezone=["UTC", "Europe/Paris"][i % 2],
            priority=i % 10,
            queue=["", "reports"][i % 2],
        )
        for i in range(n)
    )


def _clear() -> None:
    """Empty the tables between sizes: a flush, not 10,000 deletes each with its signals."""
    from django.core.management.color import no_style
    from django.db import connection

    # Content types and permissions stay: the change history (auditlog) writes rows that point
    # at the content types this process has cached.
    kept = {"django_content_type", "auth_permission"}
    tables = [
        name
        for name in connection.introspection.django_table_names(only_existing=True)
        if name not in kept
    ]
    connection.ops.execute_sql_flush(
        connection.ops.sql_flush(no_style(), tables, allow_cascade=False)
    )


def _naive_sync() -> int:
    """What a hand-written sync does: get_or_create the crontab, save() every PeriodicTask."""
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    from orchestrator.models import ScheduledTask

    for task in ScheduledTask.objects.select_related("task_definition"):
        minute, hour, dom, month, dow = task.cron.split()
        crontab = CrontabSchedule.objects.filter(
            minute=minute,
            hour=hour,
            day_of_month=dom,
            month_of_year=month,
            day_of_week=dow,
            timezone=task.timezone,
        ).first() or CrontabSchedule.objects.create(
            minute=minute,
            hour=hour,
            day_of_month=dom,
            month_of_year=month,
            day_of_week=dow,
            timezone=task.timezone,
        )
        periodic = PeriodicTask.objects.filter(name=f"naive:{task.pk}").first() or PeriodicTask(
            name=f"naive:{task.pk}"
        )
        periodic.task = "orchestrator.run_scheduled_task"
        periodic.args = json.dumps([task.pk])
        periodic.crontab = crontab
        periodic.enabled = task.enabled
        periodic.queue = task.queue or None
        periodic.priority = task.priority
        periodic.save()
    return 0


def run(sizes: list[int], naive_limit: int) -> str:
    from django.db import transaction

    from orchestrator.beat_sync import beat_sync
    from orchestrator.models import ScheduledTask

    rows = []
    for n in sizes:
        _clear()
        _make_tasks(n)
        initial = measure(beat_sync)
        resync = measure(beat_sync)
        assert resync.result.created == resync.result.updated == 0, resync.result

        def edit_one() -> None:
            task = ScheduledTask.objects.order_by("pk").first()
            task.cron = "7 * * * *"
            with transaction.atomic():
                task.save()

        edit = measure(edit_one)
        naive: Measurement | None = None
        if n <= naive_limit:
            naive = measure(_naive_sync)
            naive_again = measure(_naive_sync)
        rows.append(
            [
                n,
                initial.seconds,
                initial.queries,
                resync.seconds,
                resync.queries,
                edit.seconds,
                edit.queries,
                naive.seconds if naive else "not run",
                naive.queries if naive else "-",
                naive_again.seconds if naive else "not run",
            ]
        )
    # The benchmarks of one run share a database. 10,000 every-minute tasks left behind would
    # be due in the others' workers, whose watchdog records every one of them missed each pass.
    _clear()
    return table(
        [
            "tasks",
            "initial sync s",
            "queries",
            "no-change re-sync s",
            "queries",
            "save() of one edited task s",
            "queries",
            "naive save() loop s",
            "queries",
            "naive loop again s",
        ],
        rows,
    )


def main(smoke: bool) -> str:
    if smoke:
        return run([50, 200], naive_limit=200)
    return run([1_000, 10_000], naive_limit=1_000)
