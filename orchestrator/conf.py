"""The one place where orchestrator reads its settings.

Everything lives in one dict, ``settings.ORCHESTRATOR``. Values are read on every
access (never cached at import), so ``override_settings`` works in tests.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Module prefixes whose callables may be named by a TaskDefinition.
    "ALLOWED_TASK_MODULES": (),
    # Run a full beat_sync when `celery beat` starts.
    "STARTUP_TASK_SYNC": True,
    # Absolute URL of the site, used to build links in alerts ("https://ops.example.com").
    "BASE_URL": "",
    # Slack bot token for chat.postMessage channels; falls back to $ORCHESTRATOR_SLACK_BOT_TOKEN.
    "SLACK_BOT_TOKEN": "",
    # Slack Web API base URL (tests and Slack-compatible servers override it).
    "SLACK_API_URL": "https://slack.com/api/",
    # Celery queue that notification deliveries go through; None means Celery's default queue.
    "NOTIFICATION_QUEUE": None,
    # Delivery retries of one alert: a dict of DeliveryRetryPolicy fields (max_attempts,
    # max_seconds, base_delay, max_delay, jitter); empty keeps the defaults (5 attempts, 60 s).
    "NOTIFICATION_RETRY": {},
    # Sender address of alert and report emails; None means settings.DEFAULT_FROM_EMAIL.
    "EMAIL_FROM": None,
    # How many characters of an error message, result or traceback are stored and shown.
    "MAX_ERROR_CHARS": 2000,
    "MAX_RESULT_CHARS": 10000,
    "MAX_TRACEBACK_CHARS": 20000,
    # Retries due later than this many seconds are not sent to the broker: their "retried" run is
    # kept in the database and the maintenance task sends it when due (Redis redelivers unacked
    # ETA messages after its visibility_timeout, RabbitMQ drops the channel after
    # consumer_timeout). Keep it below both.
    "MAX_BROKER_COUNTDOWN": 1800,
    # Days of run history kept: the maintenance task deletes older runs, except each task's
    # latest final run, runs still queued, running or awaiting a retry, and runs a kept alert
    # delivery points to. None keeps every run.
    "RUN_RETENTION_DAYS": 90,
    # Days of the alert delivery log kept (finished deliveries; alert state that changes
    # nothing any more goes with them). None keeps them all.
    "DELIVERY_RETENTION_DAYS": 30,
    # Seconds after which the maintenance task marks a run of a task without a time limit that is
    # still "running" as lost, and alerts it (a task with a limit gets its limit plus 60 s).
    # None: never, for tasks without a limit.
    "STUCK_RUN_TIMEOUT": 6 * 3600,
    # Cron schedule, in UTC, of the maintenance task that beat_sync keeps as the PeriodicTask
    # "orchestrator:maintenance" (it sends long retries, marks stuck runs and re-queues lost
    # alerts). None removes the entry: run orchestrator.run_maintenance some other way.
    "MAINTENANCE_SCHEDULE": "* * * * *",
    # Seconds a beat process with orchestrator's scheduler holds the sending lease without renewing
    # it; a standby takes over at most this long (plus one wake-up) after the leader stopped.
    "SCHEDULER_LEASE_SECONDS": 10,
    # Seconds without a leader's heartbeat after which the scheduler counts as down.
    "SCHEDULER_STALE_AFTER": 60,
    # Seconds after its tick before a run that has not started counts as missed (a scheduled
    # task's missed_grace overrides it).
    "MISSED_RUN_GRACE": 120,
    # Seconds between two watchdog passes across the fleet (missed runs, the scheduler's health).
    "WATCHDOG_INTERVAL": 30,
    # Run the watchdog in every Celery worker (a bootstep; one worker at a time does a pass).
    # False: run `python manage.py orchestrator_watchdog --loop` somewhere instead.
    "WATCHDOG_IN_WORKERS": True,
    # Broker transport used to translate priorities ("redis", "amqp", ...); None reads Celery's
    # broker_url.
    "BROKER_TRANSPORT": None,
    # Hosts that Slack webhook URLs (and SLACK_API_URL) may point at: "host" or "host:port".
    # Targets must use https; plain http only for a loopback host listed with its port (a local
    # Slack look-alike). See docs/security.md.
    "WEBHOOK_ALLOWED_HOSTS": ["hooks.slack.com"],
    # Notification channel kinds besides the built-in "slack" and "email": kind -> dotted path
    # of a Channel subclass, such as {"test": "orchestrator.notifications.testing.TestChannel"}.
    "CHANNEL_KINDS": {},
    # Each run's own log (TaskRun.log): the lowest level of the log records kept (a level name
    # or number), and how many bytes of it are kept, its last ones; 0 turns the run log off.
    "RUN_LOG_LEVEL": "INFO",
    "RUN_LOG_MAX_BYTES": 65536,
    # Bearer token that lets Prometheus read <dashboard>/metrics without a user session
    # ("Authorization: Bearer <token>"); empty: only staff users with view_taskrun may.
    "METRICS_TOKEN": "",
}


class OrchestratorSettings:
    """Typed, lazy view over ``settings.ORCHESTRATOR`` with defaults."""

    def _get(self, name: str) -> Any:
        user = getattr(settings, "ORCHESTRATOR", None) or {}
        return user.get(name, DEFAULTS[name])

    @property
    def ALLOWED_TASK_MODULES(self) -> tuple[str, ...]:
        value = self._get("ALLOWED_TASK_MODULES")
        if isinstance(value, str):
            value = (value,)
        return tuple(value or ())

    @property
    def STARTUP_TASK_SYNC(self) -> bool:
        user = getattr(settings, "ORCHESTRATOR", None) or {}
        if "STARTUP_TASK_SYNC" in user:
            return bool(user["STARTUP_TASK_SYNC"])
        # The seed project's top-level setting is honoured too.
        return bool(getattr(settings, "STARTUP_TASK_SYNC", DEFAULTS["STARTUP_TASK_SYNC"]))

    @property
    def BASE_URL(self) -> str:
        return str(self._get("BASE_URL") or "").rstrip("/")

    @property
    def SLACK_BOT_TOKEN(self) -> str:
        token = self._get("SLACK_BOT_TOKEN") or os.environ.get("ORCHESTRATOR_SLACK_BOT_TOKEN", "")
        return str(token)

    @property
    def SLACK_API_URL(self) -> str:
        url = str(self._get("SLACK_API_URL") or DEFAULTS["SLACK_API_URL"])
        return url if url.endswith("/") else url + "/"

    @property
    def NOTIFICATION_QUEUE(self) -> str | None:
        return self._get("NOTIFICATION_QUEUE") or None

    @property
    def NOTIFICATION_RETRY(self) -> dict[str, Any]:
        return dict(self._get("NOTIFICATION_RETRY") or {})

    @property
    def EMAIL_FROM(self) -> str:
        return str(self._get("EMAIL_FROM") or settings.DEFAULT_FROM_EMAIL)

    @property
    def MAX_ERROR_CHARS(self) -> int:
        return int(self._get("MAX_ERROR_CHARS"))

    @property
    def MAX_RESULT_CHARS(self) -> int:
        return int(self._get("MAX_RESULT_CHARS"))

    @property
    def MAX_TRACEBACK_CHARS(self) -> int:
        return int(self._get("MAX_TRACEBACK_CHARS"))

    @property
    def MAX_BROKER_COUNTDOWN(self) -> int:
        return int(self._get("MAX_BROKER_COUNTDOWN"))

    @property
    def STUCK_RUN_TIMEOUT(self) -> int | None:
        value = self._get("STUCK_RUN_TIMEOUT")
        return None if value is None else int(value)

    @property
    def RUN_RETENTION_DAYS(self) -> Any:
        """As set: ``orchestrator.retention`` validates it (system check orchestrator.E020)."""
        return self._get("RUN_RETENTION_DAYS")

    @property
    def DELIVERY_RETENTION_DAYS(self) -> Any:
        """As set: ``orchestrator.retention`` validates it (system check orchestrator.E021)."""
        return self._get("DELIVERY_RETENTION_DAYS")

    @property
    def MAINTENANCE_SCHEDULE(self) -> str | None:
        value = self._get("MAINTENANCE_SCHEDULE")
        return None if value is None else " ".join(str(value).split()) or None

    @property
    def SCHEDULER_LEASE_SECONDS(self) -> float:
        return float(self._get("SCHEDULER_LEASE_SECONDS"))

    @property
    def SCHEDULER_STALE_AFTER(self) -> float:
        return float(self._get("SCHEDULER_STALE_AFTER"))

    @property
    def MISSED_RUN_GRACE(self) -> int:
        return int(self._get("MISSED_RUN_GRACE"))

    @property
    def WATCHDOG_INTERVAL(self) -> float:
        return float(self._get("WATCHDOG_INTERVAL"))

    @property
    def WATCHDOG_IN_WORKERS(self) -> bool:
        return bool(self._get("WATCHDOG_IN_WORKERS"))

    @property
    def BROKER_TRANSPORT(self) -> str | None:
        return self._get("BROKER_TRANSPORT") or None

    @property
    def WEBHOOK_ALLOWED_HOSTS(self) -> tuple[Any, ...]:
        value = self._get("WEBHOOK_ALLOWED_HOSTS")
        if isinstance(value, str):
            value = (value,)
        return tuple(value or ())

    @property
    def CHANNEL_KINDS(self) -> dict[str, str]:
        return {str(kind): str(path) for kind, path in (self._get("CHANNEL_KINDS") or {}).items()}

    @property
    def RUN_LOG_LEVEL(self) -> int:
        """The level as a number; INFO for a value that names no level (check E030 says so)."""
        level = parse_log_level(self._get("RUN_LOG_LEVEL"))
        return logging.INFO if level is None else level

    @property
    def RUN_LOG_MAX_BYTES(self) -> int:
        """The limit in bytes; 0 (off) for a value that is no whole number (check E031)."""
        value = self._get("RUN_LOG_MAX_BYTES")
        if isinstance(value, bool) or not isinstance(value, int):
            return 0
        return max(value, 0)

    @property
    def METRICS_TOKEN(self) -> str:
        value = self._get("METRICS_TOKEN")
        return value if isinstance(value, str) else ""


def parse_log_level(value: Any) -> int | None:
    """A logging level from a name ("INFO", "warning") or a number; None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        level = logging.getLevelNamesMapping().get(value.strip().upper())
        return level
    return None


conf = OrchestratorSettings()
