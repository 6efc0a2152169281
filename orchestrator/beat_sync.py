"""Keep django-celery-beat's PeriodicTask rows in step with the ScheduledTasks.

This is the only module that imports django_celery_beat. Each ScheduledTask owns exactly one
PeriodicTask, named ``orchestrator:<pk>``, that sends ``orchestrator.run_scheduled_task`` with the
task's id. A full sync also keeps ``orchestrator:maintenance``, which sends
``orchestrator.run_maintenance`` on ``ORCHESTRATOR["MAINTENANCE_SCHEDULE"]`` (UTC).

A sync first plans (pure comparison of what is with what should be), then applies the plan with
bulk writes and bumps ``PeriodicTasks`` once, so that a re-sync with no change costs a constant
number of queries and does not make beat reload its schedule.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from django.db import connection, transaction
from django.db.models import CharField, OuterRef, Q, QuerySet, Subquery, Value, signals
from django.db.models.functions import Cast, Concat
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from orchestrator import cron
from orchestrator.conf import conf
from orchestrator.models import ScheduledTask, TaskDefinition
from orchestrator.policies.priority import to_broker_priority
from orchestrator.routing import broker_transport
from orchestrator.task_names import RUN_MAINTENANCE, RUN_SCHEDULED_TASK

logger = logging.getLogger(__name__)

NAME_PREFIX = "orchestrator:"
# The maintenance entry: its name is no task id, so it can never be taken for an orphan.
MAINTENANCE_NAME = f"{NAME_PREFIX}maintenance"
MAINTENANCE_TIMEZONE = "UTC"
# Fields of PeriodicTask that beat_sync owns; anything else on the row is left alone.
SYNCED_FIELDS = (
    "name",
    "task",
    "args",
    "kwargs",
    "crontab_id",
    "interval_id",
    "solar_id",
    "clocked_id",
    "enabled",
    "queue",
    "exchange",
    "routing_key",
    "priority",
    "expires",
    "expire_seconds",
    "one_off",
    "start_time",
    "headers",
    "description",
)
# Concurrent syncs (two deploys, beat start and an admin action) take this lock in turn.
_ADVISORY_LOCK_KEY = zlib.crc32(b"orchestrator.beat_sync")

CrontabKey = tuple[str, str, str, str, str, str]
# What a sync reads of each task: loading kwargs and descriptions of 10,000 rows is wasted time.
_TASK_FIELDS = (
    "pk",
    "name",
    "cron",
    "timezone",
    "enabled",
    "queue",
    "priority",
    "expires",
    "periodic_task_id",
    "task_definition__name",
    "task_definition__enabled",
)


@dataclass
class SyncError:
    scheduled_task_id: int
    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.name} (#{self.scheduled_task_id}): {self.message}"


@dataclass
class SyncReport:
    """What a sync did (or, with ``dry_run``, would do)."""

    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    errors: list[SyncError] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    dry_run: bool = False
    # ScheduledTask pk -> its PeriodicTask pk, for the tasks synced (not filled by a dry run).
    periodic_task_ids: dict[int, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def __str__(self) -> str:
        text = (
            f"created {self.created}, updated {self.updated}, deleted {self.deleted}, "
            f"unchanged {self.unchanged}"
        )
        if self.errors:
            text += f", {len(self.errors)} skipped with errors"
        return text


def periodic_task_name(scheduled_task_id: int) -> str:
    return f"{NAME_PREFIX}{scheduled_task_id}"


def _crontab_key(fields: cron.CronFields, timezone: str) -> CrontabKey:
    return (
        fields.minute,
        fields.hour,
        fields.day_of_month,
        fields.month_of_year,
        fields.day_of_week,
        timezone,
    )


def _key_of_crontab(schedule: CrontabSchedule) -> CrontabKey:
    return (
        schedule.minute,
        schedule.hour,
        schedule.day_of_month,
        schedule.month_of_year,
        schedule.day_of_week,
        str(schedule.timezone),
    )


def _desired_fields(task: ScheduledTask, transport_priority: int | None) -> dict[str, Any]:
    """Everything but the crontab: the PeriodicTask values ``task`` calls for."""
    definition = task.task_definition
    return {
        "name": periodic_task_name(task.pk),
        "task": RUN_SCHEDULED_TASK,
        "args": json.dumps([task.pk]),
        "kwargs": "{}",
        "interval_id": None,
        "solar_id": None,
        "clocked_id": None,
        "enabled": bool(task.enabled and definition.enabled),
        "queue": task.queue or None,
        "exchange": None,
        "routing_key": None,
        "priority": transport_priority,
        "expires": None,
        "expire_seconds": task.expires,
        "one_off": False,
        # A start time in the future holds the row back in beat: only the task's own
        # enabled flag and pause decide when it runs.
        "start_time": None,
        "headers": "{}",
        "description": (
            f"Managed by orchestrator for scheduled task {task.name!r} "
            f"({definition.name}); edit the scheduled task, not this row."
        ),
    }


def _maintenance_fields() -> dict[str, Any]:
    """The PeriodicTask values of the maintenance entry (everything but the crontab)."""
    return {
        "name": MAINTENANCE_NAME,
        "task": RUN_MAINTENANCE,
        "args": "[]",
        "kwargs": "{}",
        "interval_id": None,
        "solar_id": None,
        "clocked_id": None,
        "enabled": True,
        "queue": None,
        "exchange": None,
        "routing_key": None,
        "priority": None,
        "expires": None,
        "expire_seconds": None,
        "one_off": False,
        # A start time in the future holds the row back in beat: only the task's own
        # enabled flag and pause decide when it runs.
        "start_time": None,
        "headers": "{}",
        "description": (
            "Managed by orchestrator: sends retries held in the database, marks stuck runs "
            "lost and re-queues lost alerts. Set ORCHESTRATOR['MAINTENANCE_SCHEDULE'], not "
            "this row."
        ),
    }


@dataclass
class _Plan:
    creates: list[tuple[ScheduledTask, dict[str, Any], CrontabKey]] = field(default_factory=list)
    # Rows created without a ScheduledTask to link (the maintenance entry).
    extra_creates: list[tuple[dict[str, Any], CrontabKey]] = field(default_factory=list)
    updates: list[tuple[ScheduledTask | None, PeriodicTask, dict[str, Any], CrontabKey]] = field(
        default_factory=list
    )
    deletes: list[PeriodicTask] = field(default_factory=list)
    relinks: list[tuple[ScheduledTask, PeriodicTask]] = field(default_factory=list)
    unchanged: int = 0
    errors: list[SyncError] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def _plan(
    tasks: Iterable[ScheduledTask],
    existing: dict[int, PeriodicTask],
    orphans: list[PeriodicTask],
    crontabs: dict[CrontabKey, CrontabSchedule],
    transport: str,
) -> _Plan:
    plan = _Plan()
    for task in tasks:
        try:
            fields = cron.validate(task.cron)
            ZoneInfo(task.timezone)
            desired = _desired_fields(task, to_broker_priority(task.priority, transport))
        except Exception as err:  # one broken row never stops the others
            plan.errors.append(SyncError(task.pk, task.name, f"{type(err).__name__}: {err}"))
            plan.lines.append(f"skip   {task.name}: {err}")
            continue
        key = _crontab_key(fields, task.timezone)
        current = existing.get(task.pk)
        if current is None:
            plan.creates.append((task, desired, key))
            plan.lines.append(f"create {desired['name']} for {task.name} ({fields})")
            continue
        changes = {
            name: value for name, value in desired.items() if getattr(current, name) != value
        }
        # Any crontab row with the right values will do, even a duplicate made by someone else.
        if current.crontab is None or _key_of_crontab(current.crontab) != key:
            changes["crontab_id"] = None  # filled in once the crontab exists
        if changes:
            plan.updates.append((task, current, changes, key))
            what = ", ".join(sorted(changes))
            plan.lines.append(f"update {current.name} for {task.name}: {what}")
        else:
            plan.unchanged += 1
        if task.periodic_task_id != current.pk:
            plan.relinks.append((task, current))
    for orphan in orphans:
        plan.deletes.append(orphan)
        plan.lines.append(f"delete {orphan.name} (its scheduled task is gone)")
    return plan


def _plan_maintenance(plan: _Plan, current: PeriodicTask | None) -> None:
    """Add the maintenance entry to a full sync's plan: create, update, keep or remove it."""
    schedule = conf.MAINTENANCE_SCHEDULE
    if schedule is None:
        if current is not None:
            plan.deletes.append(current)
            plan.lines.append(f"delete {MAINTENANCE_NAME} (MAINTENANCE_SCHEDULE is None)")
        return
    try:
        fields = cron.validate(schedule)
    except cron.CronError as err:
        plan.errors.append(SyncError(0, MAINTENANCE_NAME, f"MAINTENANCE_SCHEDULE: {err}"))
        plan.lines.append(f"skip   {MAINTENANCE_NAME}: {err}")
        return
    key = _crontab_key(fields, MAINTENANCE_TIMEZONE)
    desired = _maintenance_fields()
    if current is None:
        plan.extra_creates.append((desired, key))
        plan.lines.append(f"create {MAINTENANCE_NAME} ({fields} UTC)")
        return
    changes = {name: value for name, value in desired.items() if getattr(current, name) != value}
    if current.crontab is None or _key_of_crontab(current.crontab) != key:
        changes["crontab_id"] = None  # filled in once the crontab exists
    if changes:
        plan.updates.append((None, current, changes, key))
        plan.lines.append(f"update {MAINTENANCE_NAME}: {', '.join(sorted(changes))}")
    else:
        plan.unchanged += 1


def _lock() -> None:
    """Hold the sync lock until the current transaction ends, committed or rolled back."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK_KEY])
    elif connection.vendor != "sqlite":  # SQLite serialises writers by itself
        # MySQL, MariaDB and the rest: a lock on django-celery-beat's change-marker row, made
        # first on a fresh database (locking a row that does not exist locks nothing, and two
        # syncs would both go ahead). A row lock ends with the transaction, as
        # pg_advisory_xact_lock does; GET_LOCK would outlive a rollback, which has no hook to
        # release it in.
        marker = PeriodicTasks.objects.select_for_update().filter(ident=1)
        if not list(marker):
            PeriodicTasks.objects.get_or_create(ident=1, defaults={"last_update": timezone.now()})
            list(marker.all())


def _load_crontabs(keys: set[CrontabKey], everything: bool) -> dict[CrontabKey, CrontabSchedule]:
    queryset = CrontabSchedule.objects.order_by("pk")
    if not everything:
        if not keys:
            return {}
        condition = Q()
        for minute, hour, day_of_month, month_of_year, day_of_week, tz in keys:
            condition |= Q(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month_of_year,
                day_of_week=day_of_week,
                timezone=tz,
            )
        queryset = queryset.filter(condition)
    found: dict[CrontabKey, CrontabSchedule] = {}
    for schedule in queryset:
        # CrontabSchedule has no unique constraint: several equal rows may exist; use the oldest.
        found.setdefault(_key_of_crontab(schedule), schedule)
    return found


def _wanted_crontab_keys(tasks: Iterable[ScheduledTask]) -> set[CrontabKey]:
    keys = set()
    for task in tasks:
        try:
            keys.add(_crontab_key(cron.validate(task.cron), task.timezone))
        except cron.CronError:
            continue
    return keys


def beat_sync(
    queryset: QuerySet[ScheduledTask] | None = None, *, dry_run: bool = False
) -> SyncReport:
    """Bring the PeriodicTasks in line with ``queryset`` (default: every ScheduledTask).

    A full sync (no queryset) also deletes the PeriodicTasks orchestrator owns whose scheduled
    task is gone, and creates, updates or (``MAINTENANCE_SCHEDULE`` None) removes the
    maintenance entry; a partial one touches only the given tasks. Rows that cannot be synced (an
    invalid cron edited straight in the database) are skipped and listed in ``errors``; the
    others are synced all the same. With ``dry_run`` nothing is written and ``plan`` lists
    what would be done.
    """
    full = queryset is None
    tasks_qs = ScheduledTask.objects.all() if queryset is None else queryset
    with transaction.atomic():
        if not dry_run:
            _lock()
        tasks = list(tasks_qs.select_related("task_definition").only(*_TASK_FIELDS).order_by("pk"))
        # Rows are owned by name: one named after a scheduled task is that task's whatever its
        # fields say (a hand edit of its task or arguments is put right, not taken for someone
        # else's row that blocks the name). The maintenance entry is read in the same query, so
        # a no-change re-sync costs no more for it.
        owned = PeriodicTask.objects.filter(name__startswith=NAME_PREFIX).select_related("crontab")
        if not full:
            owned = owned.filter(name__in=[periodic_task_name(t.pk) for t in tasks])
        by_task: dict[int, PeriodicTask] = {}
        orphans: list[PeriodicTask] = []
        maintenance: PeriodicTask | None = None
        task_ids = {t.pk for t in tasks}
        for periodic in owned:
            if periodic.name == MAINTENANCE_NAME:
                maintenance = periodic
                continue
            suffix = periodic.name[len(NAME_PREFIX) :]
            if suffix.isdigit() and int(suffix) in task_ids:
                by_task[int(suffix)] = periodic
            elif full and periodic.task == RUN_SCHEDULED_TASK:
                # Its scheduled task is gone. A row that only looks like ours (another task
                # under our prefix, and no scheduled task of that id) is someone else's: kept.
                orphans.append(periodic)
        wanted = _wanted_crontab_keys(tasks)
        crontabs = _load_crontabs(wanted, everything=full)
        plan = _plan(tasks, by_task, orphans, crontabs, broker_transport())
        if full:
            _plan_maintenance(plan, maintenance)
        report = SyncReport(
            created=len(plan.creates) + len(plan.extra_creates),
            updated=len(plan.updates),
            deleted=len(plan.deletes),
            unchanged=plan.unchanged,
            errors=plan.errors,
            plan=plan.lines,
            dry_run=dry_run,
        )
        for error in plan.errors:
            logger.warning("beat_sync skipped scheduled task %s", error)
        if dry_run:
            return report
        if plan.creates or plan.extra_creates or plan.updates or plan.deletes or plan.relinks:
            _apply(plan, crontabs)
        report.periodic_task_ids = {pk: periodic.pk for pk, periodic in by_task.items()}
        report.periodic_task_ids.update((task.pk, periodic.pk) for task, periodic in plan.relinks)
    return report


def _apply(plan: _Plan, crontabs: dict[CrontabKey, CrontabSchedule]) -> None:
    missing = {key for _, _, key in plan.creates} | {key for *_, key in plan.updates}
    missing |= {key for _, key in plan.extra_creates}
    missing -= set(crontabs)
    if missing:
        new = [
            CrontabSchedule(
                minute=m, hour=h, day_of_month=dom, month_of_year=moy, day_of_week=dow, timezone=tz
            )
            for (m, h, dom, moy, dow, tz) in sorted(missing)
        ]
        for schedule in CrontabSchedule.objects.bulk_create(new):
            crontabs[_key_of_crontab(schedule)] = schedule

    now = timezone.now()
    old_crontab_ids: set[int] = set()
    if plan.creates or plan.extra_creates:
        created = PeriodicTask.objects.bulk_create(
            [
                PeriodicTask(crontab_id=crontabs[key].pk, **desired)
                for _, desired, key in plan.creates
            ]
            + [
                PeriodicTask(crontab_id=crontabs[key].pk, **desired)
                for desired, key in plan.extra_creates
            ]
        )
        plan.relinks.extend(
            (task, periodic)
            for (task, _, _), periodic in zip(
                plan.creates, created[: len(plan.creates)], strict=True
            )
        )
    if plan.updates:
        changed_fields: set[str] = set()
        rows = []
        for _, periodic, changes, key in plan.updates:
            if "crontab_id" in changes:
                old_crontab_ids.add(periodic.crontab_id)
                changes["crontab_id"] = crontabs[key].pk
            # A changed schedule, or a re-enabled task, must not fire at once because of an old
            # last_run_at (django-celery-beat computes "due" from it).
            if "crontab_id" in changes or changes.get("enabled") is True:
                changes["last_run_at"] = None
            changes["date_changed"] = now  # auto_now is not applied by bulk_update
            for name, value in changes.items():
                setattr(periodic, name, value)
            changed_fields.update(changes)
            rows.append(periodic)
        # Batches keep each UPDATE's CASE expression small: one over 10,000 rows is slow.
        PeriodicTask.objects.bulk_update(rows, sorted(changed_fields), batch_size=500)
    if plan.relinks:
        # Every relinked task's PeriodicTask is the one named after it: one correlated UPDATE.
        own_periodic_task = PeriodicTask.objects.filter(
            name=Concat(Value(NAME_PREFIX), Cast(OuterRef("pk"), CharField()))
        ).values("pk")[:1]
        ScheduledTask.objects.filter(pk__in=[task.pk for task, _ in plan.relinks]).update(
            periodic_task=Subquery(own_periodic_task)
        )
        for task, periodic in plan.relinks:
            task.periodic_task = periodic
    if plan.deletes:
        old_crontab_ids.update(p.crontab_id for p in plan.deletes if p.crontab_id)
        PeriodicTask.objects.filter(pk__in=[p.pk for p in plan.deletes]).delete()
    _delete_orphan_crontabs(old_crontab_ids)
    # Bulk writes bypass the signal django-celery-beat relies on: tell beat once.
    PeriodicTasks.update_changed()


def _delete_orphan_crontabs(crontab_ids: Iterable[int | None]) -> None:
    """Delete crontabs that our tasks left and nothing else uses (others' rows stay)."""
    ids = {pk for pk in crontab_ids if pk is not None}
    if ids:
        CrontabSchedule.objects.filter(pk__in=ids, periodictask__isnull=True).delete()


def remove(scheduled_task_id: int, periodic_task_id: int | None) -> None:
    """Delete the PeriodicTask of a deleted ScheduledTask."""
    owned = PeriodicTask.objects.filter(
        Q(name=periodic_task_name(scheduled_task_id))
        | Q(pk=periodic_task_id or 0, task=RUN_SCHEDULED_TASK)
    )
    crontab_ids = set(owned.values_list("crontab_id", flat=True))
    if owned.delete()[0]:
        _delete_orphan_crontabs(crontab_ids)
        PeriodicTasks.update_changed()


# Signal receivers: every save or delete, from the admin, the API or a shell, syncs in the same
# transaction. QuerySet.update() sends no signal: bulk paths call beat_sync(queryset) themselves.


def _on_scheduled_task_saved(
    sender: type, instance: ScheduledTask, raw: bool, **kwargs: Any
) -> None:
    if raw:  # loaddata: fixtures may arrive before their definitions
        return
    report = beat_sync(ScheduledTask.objects.filter(pk=instance.pk))
    # The caller's instance sees its PeriodicTask without a refresh_from_db().
    instance.periodic_task_id = report.periodic_task_ids.get(instance.pk, instance.periodic_task_id)


def _on_scheduled_task_deleted(sender: type, instance: ScheduledTask, **kwargs: Any) -> None:
    remove(instance.pk, instance.periodic_task_id)


def _on_definition_saved(sender: type, instance: TaskDefinition, raw: bool, **kwargs: Any) -> None:
    if raw or kwargs.get("created"):
        return
    beat_sync(ScheduledTask.objects.filter(task_definition=instance))


def _on_beat_init(sender: Any = None, **kwargs: Any) -> None:
    if not conf.STARTUP_TASK_SYNC:
        return
    report = beat_sync()
    logger.info("orchestrator: startup beat_sync: %s", report)


def connect_signals() -> None:
    from celery.signals import beat_init

    signals.post_save.connect(
        _on_scheduled_task_saved, sender=ScheduledTask, dispatch_uid="orchestrator_sync_save"
    )
    signals.post_delete.connect(
        _on_scheduled_task_deleted, sender=ScheduledTask, dispatch_uid="orchestrator_sync_delete"
    )
    signals.post_save.connect(
        _on_definition_saved, sender=TaskDefinition, dispatch_uid="orchestrator_sync_definition"
    )
    beat_init.connect(_on_beat_init, dispatch_uid="orchestrator_startup_sync", weak=False)
