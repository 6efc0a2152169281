"""System checks for configuration mistakes. Ids are stable: never renumber them.

* orchestrator.E001: django_celery_beat is not in INSTALLED_APPS.
* orchestrator.E002: ORCHESTRATOR is not a dict, or has unknown keys.
* orchestrator.E003: MAINTENANCE_SCHEDULE is not a valid cron expression.
* orchestrator.E004: a channel kind in CHANNEL_KINDS cannot be imported.
* orchestrator.W001: ALLOWED_TASK_MODULES is empty, so no task can be defined.
* orchestrator.W002: priorities are set, but workers prefetch more than one message.
* orchestrator.W003: priorities are set, but the dispatch task is not acknowledged late.
* orchestrator.W004: the broker is RabbitMQ, but queues are declared without x-max-priority.
* orchestrator.W005: priorities are set, but the broker transport has no priorities.
* orchestrator.W006: a Slack channel posts with the bot token, but no token is configured.
* orchestrator.W007: CELERY_BEAT_SCHEDULER is not orchestrator's scheduler.
* orchestrator.W008: Redis's visibility_timeout is shorter than a task's time limit or expiry.
* orchestrator.E010: SLACK_API_URL is malformed, or not https (plain http only to a listed
  loopback host:port).
* orchestrator.E011: an entry of WEBHOOK_ALLOWED_HOSTS is not a host or host:port.
* orchestrator.W010: saved notification channels whose target the current validation refuses
  (a webhook host no longer allowed, an unparsable URL): their alerts fail until fixed.
* orchestrator.E020: RUN_RETENTION_DAYS is not None or a whole number of days from 1 to 36500.
* orchestrator.E021: DELIVERY_RETENTION_DAYS is not None or a whole number of days from 1 to 36500.
* orchestrator.W020: deliveries are kept longer than runs, so runs they point to outlive
  RUN_RETENTION_DAYS.
* orchestrator.E030: RUN_LOG_LEVEL names no logging level.
* orchestrator.E031: RUN_LOG_MAX_BYTES is not a whole number of bytes, 0 or more.
* orchestrator.W030: RUN_LOG_MAX_BYTES is above 1 MiB, kept in every run's row.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ValidationError
from django.db import DatabaseError
from django.db.models import Q

from orchestrator import cron, retention
from orchestrator.conf import DEFAULTS, conf, parse_log_level
from orchestrator.models import NotificationChannel, ScheduledTask
from orchestrator.notifications.outbound import SETTING, parse_allowed_host, url_refusal
from orchestrator.notifications.registry import UnknownChannelKind, channel_class
from orchestrator.policies.priority import HIGH_FIRST_TRANSPORTS, supports_priority
from orchestrator.routing import broker_transport
from orchestrator.task_names import RUN_SCHEDULED_TASK


@register(Tags.compatibility)
def check_installed_apps(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    if not apps.is_installed("django_celery_beat"):
        return [
            Error(
                "orchestrator needs django-celery-beat, which is not installed.",
                hint="Add 'django_celery_beat' to INSTALLED_APPS.",
                id="orchestrator.E001",
            )
        ]
    return []


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    user = getattr(settings, "ORCHESTRATOR", {})
    if not isinstance(user, dict):
        return [
            Error(
                "settings.ORCHESTRATOR must be a dict.",
                hint="Set ORCHESTRATOR = {'ALLOWED_TASK_MODULES': ['myapp.jobs'], ...}.",
                id="orchestrator.E002",
            )
        ]
    problems: list[Error | Warning] = []
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        problems.append(
            Error(
                f"Unknown key(s) in settings.ORCHESTRATOR: {', '.join(unknown)}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                id="orchestrator.E002",
            )
        )
    schedule = conf.MAINTENANCE_SCHEDULE
    if schedule is not None:
        try:
            cron.validate(schedule)
        except cron.CronError as err:
            problems.append(
                Error(
                    f"ORCHESTRATOR['MAINTENANCE_SCHEDULE'] is invalid: {err}",
                    hint="Use a 5-field cron expression such as '* * * * *', or None to run "
                    "orchestrator.run_maintenance some other way.",
                    id="orchestrator.E003",
                )
            )
    problems.extend(_channel_kind_problems())
    problems.extend(_outbound_problems())
    problems.extend(_metrics_token_problems(user.get("METRICS_TOKEN", "")))
    if not conf.ALLOWED_TASK_MODULES:
        problems.append(
            Warning(
                "ORCHESTRATOR['ALLOWED_TASK_MODULES'] is empty: no task definition can name a "
                "callable.",
                hint="List the module prefixes of your job functions, such as ['billing.jobs'].",
                id="orchestrator.W001",
            )
        )
    return problems


# Shorter bearer tokens can be guessed; 32 random characters (secrets.token_urlsafe(24)) cannot.
METRICS_TOKEN_MIN_LENGTH = 24


def _metrics_token_problems(token: Any) -> list[Error | Warning]:
    if not isinstance(token, str):
        return [
            Error(
                f"ORCHESTRATOR['METRICS_TOKEN'] must be a string, not {type(token).__name__}.",
                hint="Set it to a long random string, such as the output of "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))', or leave it empty.",
                id="orchestrator.E025",
            )
        ]
    if token and (len(token) < METRICS_TOKEN_MIN_LENGTH or token != token.strip()):
        return [
            Warning(
                f"ORCHESTRATOR['METRICS_TOKEN'] is {len(token)} characters long or has spaces "
                "around it: a short token can be guessed, and a padded one never matches.",
                hint=f"Use at least {METRICS_TOKEN_MIN_LENGTH} random characters, such as "
                "secrets.token_urlsafe(32), without surrounding spaces.",
                id="orchestrator.W025",
            )
        ]
    return []


def _channel_kind_problems() -> list[Error]:
    problems = []
    for kind, path in conf.CHANNEL_KINDS.items():
        try:
            channel_class(kind)
        except ImportError as err:
            problems.append(
                Error(
                    f"ORCHESTRATOR['CHANNEL_KINDS'][{kind!r}] = {path!r} cannot be imported: {err}",
                    hint="Give the dotted path of a Channel subclass, such as "
                    "'orchestrator.notifications.testing.TestChannel'.",
                    id="orchestrator.E004",
                )
            )
    return problems


def _outbound_problems() -> list[Error]:
    problems = []
    entries = (getattr(settings, "ORCHESTRATOR", None) or {}).get("WEBHOOK_ALLOWED_HOSTS")
    if entries is not None and not isinstance(entries, list | tuple):
        problems.append(
            Error(
                f"{SETTING} must be a list of host names, not {type(entries).__name__}.",
                hint='Set it to a list such as ["hooks.slack.com"].',
                id="orchestrator.E011",
            )
        )
    else:
        for entry in conf.WEBHOOK_ALLOWED_HOSTS:
            try:
                parse_allowed_host(entry)
            except ValueError as err:
                problems.append(
                    Error(
                        f"{SETTING} has an entry that allows nothing: {err}.",
                        hint='List "host" or "host:port" entries, such as "hooks.slack.com" or '
                        '"127.0.0.1:8080" for a local Slack look-alike.',
                        id="orchestrator.E011",
                    )
                )
    if refusal := url_refusal(conf.SLACK_API_URL, what="SLACK_API_URL", from_settings=True):
        problems.append(
            Error(
                f'ORCHESTRATOR["SLACK_API_URL"] cannot be used: {refusal}',
                hint="Leave it unset (https://slack.com/api/), or for a local look-alike over "
                f"http list its loopback host:port in {SETTING}.",
                id="orchestrator.E010",
            )
        )
    return problems


@register(Tags.compatibility, deploy=False)
def check_channel_targets(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[Warning]:
    # Validation rules tighten (WEBHOOK_ALLOWED_HOSTS): channels saved before keep their target,
    # and this says which of them now fail rather than letting their alerts fail unannounced.
    if not databases:
        return []
    try:
        channels = list(NotificationChannel.objects.values_list("name", "kind", "target"))
    except DatabaseError:
        return []
    refused = []
    for name, kind, target in channels:
        try:
            channel_class(kind).validate_target(target)
        except (UnknownChannelKind, ImportError):
            continue  # orchestrator.E004 and the kind field report these
        except ValidationError:
            refused.append(name)
    if not refused:
        return []
    shown = ", ".join(refused[:10]) + (
        f" and {len(refused) - 10} more" if len(refused) > 10 else ""
    )
    return [
        Warning(
            f"Notification channel(s) {shown} have a target that validation now refuses (a "
            f"webhook host not in {SETTING}, plain http, or a URL that cannot be parsed): "
            "every alert to them fails.",
            hint="Open each channel in the admin and save it with the URL Slack gave you, or "
            f"add its host to {SETTING}.",
            id="orchestrator.W010",
        )
    ]


def _celery_app() -> Any:
    return current_app


def _celery_conf() -> Any:
    return _celery_app().conf


def _dispatch_task_acks_late() -> bool:
    # Reading the attribute through the registered task applies the project's task annotations.
    task = _celery_app().tasks.get(RUN_SCHEDULED_TASK)
    return True if task is None else bool(task.acks_late)


def _priorities_in_use() -> bool:
    try:
        return ScheduledTask.objects.filter(priority__isnull=False).exists()
    except DatabaseError:  # no table yet (before migrate) or no database at all
        return False


@register(Tags.compatibility, deploy=False)
def check_priority_support(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[Warning]:
    # Priorities only matter once a task uses one; the query runs only when the check framework
    # is asked to look at databases (migrate, check --database), never at import time.
    if not databases or not _priorities_in_use():
        return []
    celery_conf = _celery_conf()
    transport = broker_transport()
    problems = []
    if not supports_priority(transport):
        problems.append(
            Warning(
                f"Scheduled tasks have priorities, but the {transport!r} broker transport "
                "ignores message priority.",
                hint="Use Redis or RabbitMQ, or clear the priorities.",
                id="orchestrator.W005",
            )
        )
        return problems
    if (celery_conf.worker_prefetch_multiplier or 0) != 1:
        problems.append(
            Warning(
                "Scheduled tasks have priorities, but workers prefetch "
                f"{celery_conf.worker_prefetch_multiplier} messages per process; prefetched "
                "messages bypass priority.",
                hint="Set CELERY_WORKER_PREFETCH_MULTIPLIER = 1.",
                id="orchestrator.W002",
            )
        )
    if not _dispatch_task_acks_late():
        problems.append(
            Warning(
                "Scheduled tasks have priorities, but orchestrator.run_scheduled_task is not "
                "acknowledged late (task annotations changed it), so workers reserve messages "
                "ahead of priority.",
                hint="Remove the acks_late override for orchestrator.run_scheduled_task.",
                id="orchestrator.W003",
            )
        )
    return problems


@register(Tags.compatibility)
def check_rabbitmq_queue_priority(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    # Not gated on priorities being in use: an operator can set one in the admin at any time,
    # and a queue's x-max-priority is fixed when the queue is first declared (RabbitMQ refuses
    # to redeclare it with other arguments), so the setting must be there before the first run.
    if broker_transport() not in HIGH_FIRST_TRANSPORTS or _celery_conf().task_queue_max_priority:
        return []
    return [
        Warning(
            "The broker is RabbitMQ, but queues are declared without x-max-priority, so "
            "RabbitMQ ignores the priorities of scheduled tasks and serves runs in arrival order.",
            hint="Set CELERY_TASK_QUEUE_MAX_PRIORITY = 10 (and re-create existing queues).",
            id="orchestrator.W004",
        )
    ]


@register(Tags.compatibility, deploy=False)
def check_slack_bot_token(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[Warning]:
    if not databases or conf.SLACK_BOT_TOKEN:
        return []
    try:
        names = list(
            NotificationChannel.objects.filter(kind="slack", enabled=True)
            .exclude(target__startswith="https://")
            .exclude(target__startswith="http://")
            .values_list("name", flat=True)[:5]
        )
    except DatabaseError:
        return []
    if not names:
        return []
    return [
        Warning(
            f"Slack channel(s) {', '.join(names)} post with chat.postMessage, but no bot token "
            "is configured, so every alert to them fails.",
            hint='Set ORCHESTRATOR["SLACK_BOT_TOKEN"] or the ORCHESTRATOR_SLACK_BOT_TOKEN '
            "environment variable, or use an incoming-webhook URL as the target.",
            id="orchestrator.W006",
        )
    ]


SCHEDULER_PATH = "orchestrator.scheduler:Scheduler"
_SCHEDULER_NAMES = frozenset({SCHEDULER_PATH, "orchestrator.scheduler.Scheduler"})


def _is_orchestrator_scheduler(value: Any) -> bool:
    if isinstance(value, str):
        if value in _SCHEDULER_NAMES:
            return True
        from kombu.utils.imports import symbol_by_name

        try:
            value = symbol_by_name(value)
        except Exception:  # a wrong path is beat's error to report; here it is not ours
            return False
    from orchestrator.scheduler import Scheduler

    return isinstance(value, type) and issubclass(value, Scheduler)


@register(Tags.compatibility)
def check_beat_scheduler(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    configured = _celery_conf().beat_scheduler
    if _is_orchestrator_scheduler(configured):
        return []
    shown = configured if isinstance(configured, str) else getattr(configured, "__name__", "?")
    return [
        Warning(
            f"CELERY_BEAT_SCHEDULER is {shown!r}, not orchestrator's scheduler: beat then sends "
            "due tasks one at a time (falling behind with many schedules), several beat "
            "processes cannot share the work safely, runs are placed in their tick by the "
            "worker's clock, no catch-up policy applies after an outage, and the scheduler's "
            "heartbeat (dashboard, /health/) is never written.",
            hint=f'Set CELERY_BEAT_SCHEDULER = "{SCHEDULER_PATH}" (or start beat with '
            f"-S {SCHEDULER_PATH}).",
            id="orchestrator.W007",
        )
    ]


# Redis's default, when broker_transport_options does not set one.
REDIS_DEFAULT_VISIBILITY_TIMEOUT = 3600


@register(Tags.compatibility, deploy=False)
def check_visibility_timeout(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[Warning]:
    if not databases or broker_transport() != "redis":
        return []
    options = _celery_conf().broker_transport_options or {}
    timeout = float(options.get("visibility_timeout", REDIS_DEFAULT_VISIBILITY_TIMEOUT))
    try:
        longest = list(
            ScheduledTask.objects.filter(Q(time_limit__gt=timeout) | Q(expires__gt=timeout))
            .order_by("name")
            .values_list("name", "time_limit", "expires")[:5]
        )
    except DatabaseError:
        return []
    if not longest:
        return []
    names = ", ".join(
        f"{name} ({max(limit or 0, expires or 0)} s)" for name, limit, expires in longest
    )
    return [
        Warning(
            f"Redis's visibility_timeout ({timeout:g} s) is shorter than the time limit or expiry "
            f"of scheduled task(s) {names}: Redis delivers an unacknowledged message again "
            "after that long, even to a live worker, so a long run would start twice and a "
            "message could come back after its expiry.",
            hint="Raise CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'] above the longest "
            "time_limit and expires, or lower those.",
            id="orchestrator.W008",
        )
    ]


RETENTION_CHECK_IDS = {
    "RUN_RETENTION_DAYS": "orchestrator.E020",
    "DELIVERY_RETENTION_DAYS": "orchestrator.E021",
}


@register(Tags.compatibility)
def check_retention(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    if not isinstance(getattr(settings, "ORCHESTRATOR", {}), dict):
        return []  # E002 says so
    problems: list[Error | Warning] = []
    for name, check_id in RETENTION_CHECK_IDS.items():
        problem = retention.retention_problem(name, getattr(conf, name))
        if problem is not None:
            problems.append(
                Error(
                    problem,
                    hint=f"Set ORCHESTRATOR['{name}'] to a number of days such as "
                    f"{DEFAULTS[name]}, or None to keep that history forever.",
                    id=check_id,
                )
            )
    if problems:
        return problems
    runs, deliveries = conf.RUN_RETENTION_DAYS, conf.DELIVERY_RETENTION_DAYS
    if runs is not None and (deliveries is None or deliveries > runs):
        kept = "forever" if deliveries is None else f"for {deliveries} days"
        problems.append(
            Warning(
                f"Notification deliveries are kept {kept} but runs for {runs} days: a run that "
                "a kept delivery points to is kept with it, so the runs that were alerted "
                "outlive RUN_RETENTION_DAYS.",
                hint="Set ORCHESTRATOR['DELIVERY_RETENTION_DAYS'] to RUN_RETENTION_DAYS or less.",
                id="orchestrator.W020",
            )
        )
    return problems


# Past this, each run's row carries more log than a page or an alert can show.
RUN_LOG_WARN_BYTES = 1024 * 1024


@register(Tags.compatibility)
def check_run_log(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    user = getattr(settings, "ORCHESTRATOR", None)
    if not isinstance(user, dict):
        return []  # E002 says so
    problems: list[Error | Warning] = []
    if "RUN_LOG_LEVEL" in user and parse_log_level(user["RUN_LOG_LEVEL"]) is None:
        problems.append(
            Error(
                f"ORCHESTRATOR['RUN_LOG_LEVEL'] is {user['RUN_LOG_LEVEL']!r}, which names no "
                "logging level; runs log at INFO and above until it is fixed.",
                hint='Use a level name such as "INFO", "WARNING" or "DEBUG", or a number '
                "(logging.INFO).",
                id="orchestrator.E030",
            )
        )
    if "RUN_LOG_MAX_BYTES" in user:
        size = user["RUN_LOG_MAX_BYTES"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            problems.append(
                Error(
                    f"ORCHESTRATOR['RUN_LOG_MAX_BYTES'] is {size!r}, not a whole number of "
                    "bytes; no run log is kept until it is fixed.",
                    hint="Use a whole number such as 65536 (the default), or 0 to keep no run log.",
                    id="orchestrator.E031",
                )
            )
        elif size > RUN_LOG_WARN_BYTES:
            problems.append(
                Warning(
                    f"ORCHESTRATOR['RUN_LOG_MAX_BYTES'] is {size:,} bytes: every run's row may "
                    "carry that much log, which weighs on the database, its backups and the "
                    "pages that show a run.",
                    hint="Keep it at 1 MiB (1048576) or less; send long output to your log "
                    "stack instead.",
                    id="orchestrator.W030",
                )
            )
    return problems
