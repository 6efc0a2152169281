"""Scheduled work as data: definitions, schedules with their policies, run history, alerts."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import IntegrityError, models, transaction
from django.db.models import F, Q
from django.utils import timezone

from orchestrator import callables, cron, history
from orchestrator.conf import conf
from orchestrator.notifications.events import DELIVERY_EVENT_CHOICES, Event
from orchestrator.notifications.registry import kind_choices
from orchestrator.notifications.validation import clean_channel
from orchestrator.policies.retry import BackoffKind, RetryPolicy
from orchestrator.sanitize import UnreadableJSON
from orchestrator.validators import (
    MAX_JSON_DEPTH,
    MAX_STORED_JSON_DEPTH,
    nested_deeper_than,
    validate_cron,
    validate_exception_names,
    validate_import_path_shape,
    validate_kwargs_object,
    validate_queue_name,
    validate_storable_text,
    validate_timezone,
)

if TYPE_CHECKING:
    from celery.result import AsyncResult


def default_timezone() -> str:
    return str(settings.TIME_ZONE or "UTC")


def channel_kind_choices() -> list[tuple[str, str]]:
    """Channel kinds from the notification registry (a callable: adding a kind needs no
    migration)."""
    return kind_choices()


def _operations() -> Any:
    """The operations service, as ``OrchestratorConfig.ready()`` wired it (models never import
    a service)."""
    return apps.get_app_config("orchestrator").operations  # type: ignore[attr-defined]


def default_channel_events() -> list[str]:
    return [Event.FAILURE, Event.RECOVERY, Event.PAUSED, Event.MISSED, Event.SCHEDULER]


__all__ = [
    "AlertCount",
    "AlertState",
    "BeatProcess",
    "Event",
    "NotificationChannel",
    "NotificationDelivery",
    "RetiredRunCount",
    "ScheduledTask",
    "SchedulerLease",
    "TaskDefinition",
    "TaskRun",
    "TaskRunRollup",
    "TaskState",
    "WatchdogState",
]


class JSONField(models.JSONField):
    """Django's JSONField, which still loads a row whose value is nested too deeply to decode.

    ``json.loads`` raises RecursionError for text nested past Python's recursion limit, and a
    row written so around validation (raw SQL) would then fail every query that loads it: the
    admin, the dashboard, the API and the worker. Such a value, and one that decodes but is
    nested deeper than ``MAX_STORED_JSON_DEPTH`` (newer Pythons decode far deeper, and then fail
    to show it), loads as :class:`~orchestrator.sanitize.UnreadableJSON`, and is written back
    unchanged.
    Migrations see Django's own field: nothing changes in the database.
    """

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        try:
            decoded = super().from_db_value(value, expression, connection)
        except RecursionError:
            return UnreadableJSON(value)
        if isinstance(value, str) and nested_deeper_than(decoded, MAX_STORED_JSON_DEPTH):
            return UnreadableJSON(value)
        return decoded

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if isinstance(value, UnreadableJSON):
            return value.text
        return super().get_db_prep_value(value, connection, prepared)

    def validate(self, value: Any, model_instance: Any) -> None:
        if isinstance(value, UnreadableJSON):
            raise ValidationError(
                f"The stored value is nested too deeply to read (more than "
                f"{MAX_JSON_DEPTH} levels); enter it again as flatter JSON.",
                code="invalid",
            )
        super().validate(value, model_instance)

    def deconstruct(self) -> Any:
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs


class TaskDefinition(models.Model):
    """A Python callable that scheduled tasks may run, named by its import path."""

    name = models.CharField(
        max_length=200,
        unique=True,
        validators=[validate_storable_text],
        help_text="A unique, human-readable name.",
    )
    import_path = models.CharField(
        "import path",
        max_length=255,
        validators=[validate_import_path_shape],
        help_text="Dotted path of the function, such as 'billing.tasks.send_invoices'. "
        "Its module must be in ORCHESTRATOR['ALLOWED_TASK_MODULES'].",
    )
    description = models.TextField(blank=True, validators=[validate_storable_text])
    category = models.CharField(
        max_length=100,
        blank=True,
        db_index=True,
        validators=[validate_storable_text],
        help_text="Free text used to group tasks.",
    )
    enabled = models.BooleanField(
        default=True,
        help_text="Disabling a definition stops every scheduled task that uses it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "task definition"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if not self.import_path:
            return
        try:
            callables.check_allowed(self.import_path, conf.ALLOWED_TASK_MODULES)
        except callables.CallableError:
            return  # already reported by the field's validator
        try:
            callables.resolve(self.import_path, conf.ALLOWED_TASK_MODULES)
        except callables.CallableError as err:
            raise ValidationError({"import_path": str(err)}) from None

    def get_additional_data(self) -> dict[str, str]:
        return history.additional_data()

    def resolve(self) -> Any:
        """The callable, re-checked against the allow-list (raises CallableError)."""
        return callables.resolve(self.import_path, conf.ALLOWED_TASK_MODULES)


class ScheduledTask(models.Model):
    """A definition run on a cron schedule, with its arguments and its policies."""

    class Overlap(models.TextChoices):
        ALLOW = "allow", "Allow: runs may overlap"
        SKIP = "skip", "Skip: a run that arrives while another is running is skipped"

    class CatchUp(models.TextChoices):
        SKIP = "skip", "Skip: run none of the missed ticks"
        ONCE = "once", "Once: run the latest missed tick"
        ALL = "all", "All: run each missed tick, oldest first, up to the limit"

    class Backoff(models.TextChoices):
        FIXED = BackoffKind.FIXED.value, "Fixed: the same delay every time"
        LINEAR = BackoffKind.LINEAR.value, "Linear: delay x retry number"
        EXPONENTIAL = BackoffKind.EXPONENTIAL.value, "Exponential: delay x 2^(retry - 1)"

    name = models.CharField(max_length=200, unique=True, validators=[validate_storable_text])
    task_definition = models.ForeignKey(
        TaskDefinition,
        on_delete=models.PROTECT,
        related_name="scheduled_tasks",
        verbose_name="task definition",
    )
    cron = models.CharField(
        max_length=200,
        validators=[validate_cron],
        help_text="Five fields: minute hour day-of-month month day-of-week, "
        "such as '*/15 * * * *' or '30 6 * * mon-fri'.",
    )
    timezone = models.CharField(
        max_length=63,
        default=default_timezone,
        validators=[validate_timezone],
        help_text="IANA time zone the cron expression is read in, such as 'Europe/Paris'.",
    )
    kwargs = JSONField(
        default=dict,
        blank=True,
        validators=[validate_kwargs_object],
        help_text='A JSON object passed to the function as keyword arguments, such as {"days": 7}.',
    )
    enabled = models.BooleanField(default=True, help_text="A disabled task never runs.")
    description = models.TextField(blank=True, validators=[validate_storable_text])

    max_retries = models.PositiveSmallIntegerField(
        "max retries",
        default=3,
        validators=[MaxValueValidator(100)],
        help_text="Retries after the first attempt (0 = never retry).",
    )
    retry_backoff = models.CharField(
        "backoff", max_length=20, choices=Backoff.choices, default=Backoff.EXPONENTIAL
    )
    retry_delay = models.PositiveIntegerField(
        "retry delay (s)", default=60, help_text="Seconds before the first retry."
    )
    retry_backoff_max = models.PositiveIntegerField(
        "maximum delay (s)",
        default=3600,
        help_text="No retry waits longer than this many seconds.",
    )
    retry_jitter = models.BooleanField(
        "jitter",
        default=True,
        help_text="Spread retries randomly between half the delay and the full delay.",
    )
    priority = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(9)],
        help_text="0 (lowest) to 9 (most urgent); empty uses the broker's default.",
    )
    queue = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_queue_name],
        help_text="Celery queue; blank uses the default queue.",
    )
    expires = models.PositiveIntegerField(
        "expires (s)",
        null=True,
        blank=True,
        help_text="Seconds after which a run that has not started is discarded.",
    )
    time_limit = models.PositiveIntegerField(
        "time limit (s)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Seconds a run may take before the worker stops it; empty for no limit.",
    )

    retry_on = JSONField(
        "retry on",
        default=list,
        blank=True,
        validators=[validate_exception_names],
        help_text='Exception classes that may be retried, such as ["ConnectionError", '
        '"requests.exceptions.Timeout"]; a class matches its subclasses. Empty: any error.',
    )
    never_retry_on = JSONField(
        "never retry on",
        default=list,
        blank=True,
        validators=[validate_exception_names],
        help_text='Exception classes that fail the run at once, such as ["ValueError"]; '
        "wins over retry on.",
    )
    overlap = models.CharField(
        max_length=10,
        choices=Overlap.choices,
        default=Overlap.ALLOW,
        help_text="What happens to a run that arrives while another run of this task is running.",
    )
    pause_after_failures = models.PositiveSmallIntegerField(
        "pause after N failures",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Pause the task after this many final failures in a row (a circuit breaker); "
        "empty: never.",
    )
    paused = models.BooleanField(
        default=False,
        help_text="A paused task keeps its schedule, but its runs are skipped (and recorded as "
        "such) until it is resumed or its pause ends.",
    )
    pause_reason = models.CharField(
        "pause reason",
        max_length=500,
        blank=True,
        validators=[validate_storable_text],
        help_text="Why it is paused; shown with every skipped run.",
    )
    paused_until = models.DateTimeField(
        "paused until",
        null=True,
        blank=True,
        help_text="The pause ends by itself at this time; empty: until someone resumes it.",
    )
    version = models.PositiveIntegerField(
        default=1,
        editable=False,
        help_text="Counts the changes made to this task; each run records the one it ran under.",
    )
    catch_up = models.CharField(
        "catch-up",
        max_length=10,
        choices=CatchUp.choices,
        default=CatchUp.ONCE,
        help_text="What the scheduler sends when several ticks fell due at once (beat was down, "
        "a takeover, a broker outage).",
    )
    catch_up_limit = models.PositiveSmallIntegerField(
        "catch-up limit",
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="With catch-up 'all': at most this many missed ticks are run (the most recent).",
    )
    missed_grace = models.PositiveIntegerField(
        "missed grace (s)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Seconds after its tick before a run that has not started counts as missed; "
        "empty uses ORCHESTRATOR['MISSED_RUN_GRACE'].",
    )

    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name="orchestrator_task",
        help_text="Managed by beat_sync.",
    )
    notification_channels: models.ManyToManyField[NotificationChannel, Any] = (
        models.ManyToManyField(
            "NotificationChannel",
            blank=True,
            related_name="scheduled_tasks",
            verbose_name="notification channels",
            help_text="Where alerts go; none selected uses every enabled default channel.",
        )
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "scheduled task"
        permissions = [("run_scheduledtask", "Can run scheduled task")]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Each save is a new version: runs record the one they ran under, the change history
        # shows which change made it.
        if self.pk is not None:
            self.version = (self.version or 0) + 1
            if kwargs.get("update_fields") is not None:
                kwargs["update_fields"] = {*kwargs["update_fields"], "version"}
        super().save(*args, **kwargs)

    def clean(self) -> None:
        super().clean()
        self._clean_pause()
        if not isinstance(self.kwargs, dict) or self.task_definition_id is None:
            return
        definition = self.task_definition
        try:
            func = definition.resolve()
        except callables.CallableError as err:
            raise ValidationError(
                {"task_definition": f"Definition {definition.name!r} cannot run: {err}"}
            ) from None
        try:
            callables.check_kwargs(func, self.kwargs)
        except callables.CallableError as err:
            raise ValidationError({"kwargs": f"{err} (for {definition.import_path})"}) from None

    def _clean_pause(self) -> None:
        if self.paused:
            self.check_pause(self.pause_reason, self.paused_until)

    @staticmethod
    def check_pause(reason: str, until: dt.datetime | None) -> None:
        """Raise ``ValidationError`` on the field at fault unless a pause with this reason and
        end may start now."""
        if not (reason or "").strip():
            raise ValidationError({"pause_reason": "Say why the task is paused."})
        if until is not None and until <= timezone.now():
            raise ValidationError(
                {"paused_until": "This time has passed; give a time in the future, or none."}
            )

    def get_additional_data(self) -> dict[str, str]:
        return history.additional_data()

    @property
    def is_runnable(self) -> bool:
        return self.enabled and self.task_definition.enabled

    def is_paused(self, at: dt.datetime | None = None) -> bool:
        """Whether runs are skipped at ``at`` (now): paused, and the pause has not ended."""
        if not self.paused:
            return False
        return self.paused_until is None or (at or timezone.now()) < self.paused_until

    def pause(
        self, reason: str, until: dt.datetime | None = None, user: Any = None, source: str = ""
    ) -> None:
        """Pause the task: it keeps its schedule, but each run is skipped until it resumes.

        Validated like an admin edit (a reason, an end in the future); recorded in the change
        history with ``user`` and ``source``.
        """
        self.paused, self.pause_reason, self.paused_until = True, reason.strip(), until
        self._clean_pause()
        with history.changes_by(user, source or history.current_source()):
            self.save(update_fields=["paused", "pause_reason", "paused_until", "updated_at"])

    def resume(self, user: Any = None, source: str = "") -> None:
        """End the pause (recorded in the change history with ``user`` and ``source``)."""
        self.paused, self.pause_reason, self.paused_until = False, "", None
        with history.changes_by(user, source or history.current_source()):
            self.save(update_fields=["paused", "pause_reason", "paused_until", "updated_at"])

    def retry_policy(self) -> RetryPolicy:
        """The task's retry policy; ValueError for fields edited around validation."""
        for name in ("retry_on", "never_retry_on"):
            value = getattr(self, name)
            if isinstance(value, UnreadableJSON) or not isinstance(value or [], list):
                raise ValueError(
                    f"{name} must be a list of exception class names; fix it in the admin."
                )
        return RetryPolicy(
            max_retries=self.max_retries,
            backoff=BackoffKind(self.retry_backoff),
            delay=float(self.retry_delay),
            backoff_max=float(self.retry_backoff_max),
            jitter=self.retry_jitter,
            retry_on=tuple(self.retry_on or ()),
            never_retry_on=tuple(self.never_retry_on or ()),
        )

    def describe_schedule(self) -> str:
        return cron.describe(self.cron)

    def next_run_at(self, after: dt.datetime | None = None) -> dt.datetime | None:
        if not self.is_runnable:
            return None
        try:
            return cron.next_run(self.cron, self.timezone, after or timezone.now())
        except (cron.CronError, ValueError, KeyError):
            return None

    def notification_targets(self) -> tuple[list[NotificationChannel], bool]:
        """The channels this task's alerts go to, and whether they are the defaults.

        A task that selects no channel uses every enabled default channel. The selected ones
        are returned as selected, enabled or not: the notification service skips disabled ones,
        the pages show them as such.
        """
        selected = list(self.notification_channels.all())
        if selected:
            return selected, False
        return list(NotificationChannel.objects.filter(enabled=True, is_default=True)), True

    def run_now(
        self, kwargs: dict[str, Any] | None = None, user: Any = None, trigger: str = "manual"
    ) -> AsyncResult:
        """Send a run of this task to the workers now, outside its schedule.

        ``kwargs``, when given, replace the task's own for this run only (validated against the
        function's signature; ``ValidationError`` on the ``kwargs`` field otherwise); ``user``
        is recorded as who triggered it. The model does not know Celery: this asks the app's
        operations service (:func:`orchestrator.operations.run_now`, wired in
        ``OrchestratorConfig.ready()``), which every edge calls.
        """
        return _operations().run_now(self, kwargs=kwargs, user=user, trigger=trigger)


class TaskRun(models.Model):
    """One attempt of a scheduled task."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        RETRIED = "retried", "Failed, retry scheduled"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"
        LOST = "lost", "Lost (worker died or time limit)"
        CANCELLED = "cancelled", "Cancelled"
        MISSED = "missed", "Missed (no run within its grace period)"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "Schedule"
        MANUAL = "manual", "Manual"
        API = "api", "API"

    # Attempts that ended with an outcome of their own (a lost one is marked by someone else).
    FINISHED_STATUSES = (
        Status.SUCCEEDED,
        Status.RETRIED,
        Status.FAILED,
        Status.SKIPPED,
        Status.CANCELLED,
    )
    # What an operator may cancel: a run not started yet, a running one, or a failed attempt
    # whose retry has not started.
    CANCELLABLE_STATUSES = (Status.QUEUED, Status.RUNNING, Status.RETRIED)
    # The outcomes of a run: an attempt that was retried is not one (its retry is), skipped
    # runs did not run, running ones have no outcome yet.
    FINAL_FAILURE_STATUSES = (Status.FAILED, Status.LOST)
    OUTCOME_STATUSES = (Status.SUCCEEDED, *FINAL_FAILURE_STATUSES)
    # error_type of the lost attempts that are not final failures: the attempt ran again after
    # its worker died, or an operator terminated it on purpose. Other lost attempts (a hard
    # time limit, a stuck run) are final failures.
    WORKER_LOST = "WorkerLost"
    REVOKED = "Revoked"
    NOT_FINAL_LOST_TYPES = (WORKER_LOST, REVOKED)

    scheduled_task = models.ForeignKey(ScheduledTask, on_delete=models.CASCADE, related_name="runs")
    attempt = models.PositiveSmallIntegerField(default=1, help_text="1 for the first attempt.")
    max_attempts = models.PositiveSmallIntegerField(
        default=1, help_text="Attempts the retry policy allowed when this one ran."
    )
    status = models.CharField(max_length=20, choices=Status.choices, db_index=True)
    trigger = models.CharField(max_length=20, choices=Trigger.choices, default=Trigger.SCHEDULE)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration = models.DurationField(null=True, blank=True)
    result = JSONField(null=True, blank=True)
    error_type = models.CharField(max_length=255, blank=True)
    error_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=255, blank=True, db_index=True)
    worker = models.CharField(max_length=255, blank=True)
    queue = models.CharField(max_length=200, blank=True)
    priority = models.PositiveSmallIntegerField(null=True, blank=True)
    time_limit = models.PositiveIntegerField(
        "time limit (s)",
        null=True,
        blank=True,
        help_text="The task's time limit when this attempt started; stuck runs are judged by it.",
    )
    next_retry_at = models.DateTimeField(null=True, blank=True)
    retry_sent_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the retry that follows this attempt was handed to the broker.",
    )
    scheduled_for = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The schedule tick this run belongs to (a missed run: its first missed tick).",
    )
    missed_until = models.DateTimeField(
        "missed until",
        null=True,
        blank=True,
        help_text="A missed run: the last of the consecutive ticks it stands for.",
    )
    missed_count = models.PositiveIntegerField(
        "ticks missed",
        default=0,
        help_text="A missed run: how many consecutive ticks had no run within their grace.",
    )
    # One live run per scheduled task, schedule tick and attempt: a second beat or a redelivered
    # message for the same tick cannot run the function twice. A plain unique column rather than
    # a conditional constraint, which MySQL and MariaDB do not have: runs without a tick, and
    # lost attempts (which step aside so the redelivered message can record its own), hold NULL,
    # and every database lets NULLs repeat in a unique column.
    tick_key = models.CharField(max_length=64, null=True, blank=True, unique=True, editable=False)
    kwargs_override = JSONField(
        "kwargs override",
        null=True,
        blank=True,
        help_text="Keyword arguments given for this run only, in place of the task's; "
        "empty when the task's own were used.",
    )
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name="triggered by",
        help_text="Who sent this run; empty for runs of the schedule.",
    )
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name="cancelled by",
    )
    task_version = models.PositiveIntegerField(
        "task version",
        null=True,
        blank=True,
        help_text="The version of the scheduled task this attempt ran under (see its history).",
    )
    note = models.TextField(
        blank=True,
        help_text="Why the run ended as it did when its status and error do not say: not "
        "retried by an exception rule, skipped, cancelled.",
    )
    log = models.TextField(
        "log",
        blank=True,
        default="",
        editable=False,
        help_text="What the function logged and printed during this attempt: its last "
        'ORCHESTRATOR["RUN_LOG_MAX_BYTES"] bytes, secrets masked.',
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        verbose_name = "task run"
        indexes = [
            models.Index(fields=["scheduled_task", "-started_at"], name="orch_run_task_started"),
            models.Index(fields=["status", "-started_at"], name="orch_run_status_started"),
            # The watchdog looks for the runs of recent ticks.
            models.Index(fields=["scheduled_for"], name="orch_run_scheduled_for"),
        ]

    def __str__(self) -> str:
        return f"{self.scheduled_task} attempt {self.attempt}: {self.get_status_display()}"

    @staticmethod
    def make_tick_key(
        scheduled_task_id: int, scheduled_for: dt.datetime | None, attempt: int
    ) -> str | None:
        """The value of ``tick_key`` for a live run of that task, tick and attempt."""
        if scheduled_for is None:
            return None
        return f"{scheduled_task_id}:{scheduled_for.timestamp():.0f}:{attempt}"

    @property
    def is_cancellable(self) -> bool:
        return self.status in self.CANCELLABLE_STATUSES

    def cancel(self, user: Any = None) -> bool:
        """Cancel this run: a queued run never starts, a running one is stopped where the worker
        pool allows it (otherwise its outcome is discarded), a retry waiting for later is
        dropped. False if it had already finished. See :func:`orchestrator.operations.cancel`."""
        return bool(_operations().cancel(self, user=user))

    @classmethod
    def final_outcomes(cls) -> Q:
        """The runs that ended their task's run for good: succeeded, failed, or lost other than
        by a worker that died (the attempt ran again) or an operator's revoke. The task's state
        follows the latest of them."""
        return Q(status__in=(cls.Status.SUCCEEDED, cls.Status.FAILED)) | (
            Q(status=cls.Status.LOST) & ~Q(error_type__in=cls.NOT_FINAL_LOST_TYPES)
        )

    @property
    def is_final_failure(self) -> bool:
        """Whether this run ended the task's run for good, in failure."""
        if self.status == self.Status.FAILED:
            return True
        return self.status == self.Status.LOST and self.error_type not in self.NOT_FINAL_LOST_TYPES


# Upper bounds (seconds) of the run duration histogram kept in the aggregates and exported as
# orchestrator_run_duration_seconds. Each has its own column: changing them needs a migration.
DURATION_BUCKETS: tuple[tuple[str, float], ...] = (
    ("le_100ms", 0.1),
    ("le_500ms", 0.5),
    ("le_1s", 1.0),
    ("le_5s", 5.0),
    ("le_10s", 10.0),
    ("le_30s", 30.0),
    ("le_1m", 60.0),
    ("le_5m", 300.0),
    ("le_15m", 900.0),
    ("le_1h", 3600.0),
)


class RunCounters(models.Model):
    """The counters one aggregate row keeps about a set of runs (abstract).

    ``runs`` counts them; ``ticks`` is the sum of ``missed_count`` (missed rows stand for
    several ticks); the duration columns cover the runs that have a duration: their number,
    the sum in microseconds, and how many took at most each bucket's bound (cumulative, as
    Prometheus histograms are); ``last_started_at`` is the latest start among them.
    """

    runs = models.BigIntegerField(default=0)
    ticks = models.BigIntegerField(default=0)
    timed = models.BigIntegerField(default=0, help_text="Runs with a duration.")
    duration_us = models.BigIntegerField(default=0, help_text="Sum of durations, microseconds.")
    le_100ms = models.BigIntegerField(default=0)
    le_500ms = models.BigIntegerField(default=0)
    le_1s = models.BigIntegerField(default=0)
    le_5s = models.BigIntegerField(default=0)
    le_10s = models.BigIntegerField(default=0)
    le_30s = models.BigIntegerField(default=0)
    le_1m = models.BigIntegerField(default=0)
    le_5m = models.BigIntegerField(default=0)
    le_15m = models.BigIntegerField(default=0)
    le_1h = models.BigIntegerField(default=0)
    last_started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class TaskRunRollup(RunCounters):
    """The runs of one task that reached one final status, started within one hour (UTC).

    Kept exact by :mod:`orchestrator.rollups` in the transaction that gives a run its final
    status (and by ``forget_runs`` before runs are deleted), so that pages and metrics read a
    few rows per task and hour instead of the history. Queued and running runs are not
    counted until they end.
    """

    scheduled_task = models.ForeignKey(
        ScheduledTask, on_delete=models.CASCADE, related_name="rollups"
    )
    status = models.CharField(max_length=20)
    hour = models.DateTimeField(help_text="Start of the hour (UTC) the runs started in.")

    class Meta:
        verbose_name = "run aggregate"
        constraints = [
            models.UniqueConstraint(
                fields=["scheduled_task", "status", "hour"], name="orch_rollup_task_status_hour"
            )
        ]
        indexes = [models.Index(fields=["hour"], name="orch_rollup_hour")]

    def __str__(self) -> str:
        return f"{self.scheduled_task_id} {self.status} {self.hour:%Y-%m-%d %H:00}: {self.runs}"


class RetiredRunCount(RunCounters):
    """Per task and status: the counters of runs no longer counted under that status in
    :class:`TaskRunRollup`: deleted from the history (pruned, or deleted in the admin), or moved
    to another status (a waiting retry cancelled). Added to the aggregates, they make the
    Prometheus counters, which must never go down."""

    scheduled_task = models.ForeignKey(
        ScheduledTask, on_delete=models.CASCADE, related_name="retired_run_counts"
    )
    status = models.CharField(max_length=20)

    class Meta:
        verbose_name = "retired run count"
        constraints = [
            models.UniqueConstraint(
                fields=["scheduled_task", "status"], name="orch_retired_runs_task_status"
            )
        ]

    def __str__(self) -> str:
        return f"{self.scheduled_task_id} {self.status}: {self.runs}"


class TaskStateManager(models.Manager["TaskState"]):
    def rebuild(self, scheduled_task_id: int) -> TaskState | None:
        """Compute the state of a task again from its run history (repairs, and test data).

        The last run that ended for good (lost attempts that ran again or were revoked on
        purpose do not count), and the final failures after the last success.
        """
        runs = TaskRun.objects.filter(TaskRun.final_outcomes(), scheduled_task_id=scheduled_task_id)
        last = runs.order_by("-started_at", "-id").first()
        if last is None:
            self.filter(pk=scheduled_task_id).delete()
            return None
        success = runs.filter(status=TaskRun.Status.SUCCEEDED).order_by("-started_at").first()
        failures = runs.exclude(status=TaskRun.Status.SUCCEEDED)
        if success is not None:
            failures = failures.filter(started_at__gt=success.started_at)
        state, _ = self.update_or_create(
            scheduled_task_id=scheduled_task_id,
            defaults={
                "last_final_status": last.status,
                "last_final_at": last.finished_at,
                "consecutive_failures": failures.count(),
            },
        )
        return state

    def record(self, run: TaskRun) -> None:
        """Record ``run``, a final outcome: a success resets the failure count, a failure adds one.

        The count is incremented in SQL, so two failures recorded at once both count. The row is
        created by the first final outcome of its task.
        """
        success = run.status == TaskRun.Status.SUCCEEDED
        values: dict[str, Any] = {
            "last_final_status": run.status,
            "last_final_at": run.finished_at,
            "consecutive_failures": 0 if success else F("consecutive_failures") + 1,
        }
        if self.filter(pk=run.scheduled_task_id).update(**values):
            return
        first = {**values, "consecutive_failures": 0 if success else 1}
        try:
            with transaction.atomic():
                self.create(scheduled_task_id=run.scheduled_task_id, **first)
        except IntegrityError:  # another worker created it meanwhile
            self.filter(pk=run.scheduled_task_id).update(**values)


class TaskState(models.Model):
    """What the dispatcher keeps about a scheduled task between runs.

    Apart from :class:`ScheduledTask` because operators edit that row: an admin save writes
    every field of the row as it was loaded, and would overwrite what a run wrote meanwhile.
    Written only when it changes (a success after a success writes nothing), so the common
    attempt costs no extra statement; read with the task in the dispatcher's one query.
    """

    scheduled_task = models.OneToOneField(
        ScheduledTask, on_delete=models.CASCADE, primary_key=True, related_name="state"
    )
    last_final_status = models.CharField(
        max_length=20,
        blank=True,
        help_text="Status of the last run that ended for good (succeeded, failed or lost).",
    )
    last_final_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(
        default=0, help_text="Final failures since the last success."
    )
    missed_checked_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The watchdog has checked that every tick up to this time has a run.",
    )

    objects = TaskStateManager()

    class Meta:
        verbose_name = "task state"

    def __str__(self) -> str:
        return f"{self.scheduled_task_id}: {self.last_final_status or 'no final run'}"


class NotificationChannel(models.Model):
    """A place alerts go to: a Slack channel or webhook, or a list of email addresses."""

    name = models.CharField(max_length=200, unique=True, validators=[validate_storable_text])
    kind = models.CharField(max_length=50, choices=channel_kind_choices)
    target = models.CharField(
        max_length=2000,
        validators=[validate_storable_text],
        help_text="Slack: an incoming-webhook URL, or a channel name/ID (bot token from "
        "settings). Email: addresses separated by commas.",
    )
    events = JSONField(
        default=default_channel_events,
        blank=True,
        help_text="Events sent here: retry, failure, recovery, report.",
    )
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(
        "default channel",
        default=False,
        help_text="Used by scheduled tasks that select no channel.",
    )
    cooldown = models.PositiveIntegerField(
        default=900,
        help_text="Seconds during which repeated alerts of the same event for the same task "
        "are suppressed and counted.",
    )
    alert_after_failures = models.PositiveSmallIntegerField(
        "alert after N failures",
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Send a failure alert only after this many final failures in a row.",
    )
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "notification channel"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        clean_channel(self.kind, self.target, self.events)

    def get_additional_data(self) -> dict[str, str]:
        return history.additional_data()


class AlertState(models.Model):
    """Per channel, task and event: when the last alert went out, and what was suppressed."""

    channel = models.ForeignKey(
        NotificationChannel, on_delete=models.CASCADE, related_name="alert_states"
    )
    scheduled_task = models.ForeignKey(
        ScheduledTask, on_delete=models.CASCADE, related_name="alert_states"
    )
    event = models.CharField(max_length=20, choices=Event.choices)
    last_sent_at = models.DateTimeField(null=True, blank=True)
    suppressed_count = models.PositiveIntegerField(default=0)
    awaiting_recovery = models.BooleanField(
        default=False, help_text="A final failure was alerted and no recovery sent since."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "scheduled_task", "event"], name="orch_alert_state_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.channel_id}/{self.scheduled_task_id}/{self.event}"


class NotificationDelivery(models.Model):
    """One alert for one channel: sent, failed, or suppressed by the alert policy."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        SUPPRESSED = "suppressed", "Suppressed"

    channel = models.ForeignKey(
        NotificationChannel, on_delete=models.CASCADE, related_name="deliveries"
    )
    scheduled_task = models.ForeignKey(
        ScheduledTask, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    task_run = models.ForeignKey(
        TaskRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    event = models.CharField(max_length=20, choices=DELIVERY_EVENT_CHOICES)
    status = models.CharField(max_length=20, choices=Status.choices, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    suppressed_count = models.PositiveIntegerField(
        default=0, help_text="Alerts suppressed since the previous one, reported in this one."
    )
    error = models.TextField(blank=True, help_text="Why the send failed.")
    suppressed_reason = models.TextField(
        blank=True, help_text="Why the alert policy held this alert back."
    )
    requeued_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the maintenance pass queued it again, its first message having been lost.",
    )
    retry_at = models.DateTimeField(
        "retry at",
        null=True,
        blank=True,
        help_text="A rate-limited send: when it is tried again, as the server's Retry-After asked.",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "notification delivery"
        verbose_name_plural = "notification deliveries"

    def __str__(self) -> str:
        return f"{self.event} to {self.channel_id}: {self.status}"

    @property
    def reason(self) -> str:
        """The error of a failed send, or why the alert was suppressed, for the delivery log."""
        if self.error or not self.suppressed_reason:
            return self.error
        return f"Suppressed: {self.suppressed_reason}"


class AlertCount(models.Model):
    """How many alerts one channel sent, suppressed or failed to send, per event: kept as the
    deliveries reach those statuses, read by the metrics (never decremented)."""

    class Result(models.TextChoices):
        SENT = "sent", "Sent"
        SUPPRESSED = "suppressed", "Suppressed"
        FAILED = "failed", "Failed"

    channel = models.ForeignKey(
        NotificationChannel, on_delete=models.CASCADE, related_name="alert_counts"
    )
    event = models.CharField(max_length=20)
    result = models.CharField(max_length=20, choices=Result.choices)
    count = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "alert count"
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "event", "result"], name="orch_alert_count_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.channel_id} {self.event} {self.result}: {self.count}"


class SchedulerLease(models.Model):
    """The row that decides which ``celery beat`` process sends: the holder of an unexpired lease.

    Written only by :mod:`orchestrator.scheduler.lease` with conditional UPDATEs judged by the
    database's clock. ``heartbeat_at`` is when the holder last woke up and renewed it.
    """

    name = models.CharField(max_length=64, primary_key=True)
    owner = models.CharField(
        max_length=64, blank=True, help_text="Token of the process holding the lease."
    )
    holder = models.CharField(
        max_length=255, blank=True, help_text="hostname:pid of the process holding the lease."
    )
    term = models.PositiveBigIntegerField(
        default=0, help_text="Incremented each time another process takes the lease."
    )
    acquired_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "scheduler lease"

    def __str__(self) -> str:
        return f"{self.name}: {self.holder or 'nobody'}"


class BeatProcess(models.Model):
    """One running ``celery beat`` process with orchestrator's scheduler, leader or standby."""

    class Role(models.TextChoices):
        LEADER = "leader", "Leader"
        STANDBY = "standby", "Standby"

    ident = models.CharField(max_length=64, primary_key=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.STANDBY)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "beat process"
        verbose_name_plural = "beat processes"

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid} ({self.role})"


class WatchdogState(models.Model):
    """The watchdog's one row: whose turn the last pass was, and what it told about the
    scheduler (so that "scheduler down" and "scheduler back" are each alerted once)."""

    name = models.CharField(max_length=64, primary_key=True)
    last_pass_at = models.DateTimeField(null=True, blank=True)
    checked_through = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The time up to which the last successful pass judged ticks (before grace).",
    )
    holder = models.CharField(
        max_length=255, blank=True, help_text="The worker (or command) that ran the last pass."
    )
    scheduler_down_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set while the scheduler's heartbeat is stale, and alerted as such.",
    )

    class Meta:
        verbose_name = "watchdog state"

    def __str__(self) -> str:
        return f"{self.name}: last pass {self.last_pass_at}"


history.register(TaskDefinition, ScheduledTask, NotificationChannel)
