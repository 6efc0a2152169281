"""Django admin for definitions, scheduled tasks and their run history.

The admin is a thin edge: validation comes from the models' ``clean()`` and field validators,
beat is kept in step by ``orchestrator.beat_sync`` (on save through the model signals), and the
actions (run now, enable, disable) call ``orchestrator.operations`` like every other edge.

Keyword arguments may hold secrets, so they appear only on the change form (staff only), never in
a list, a search or a filter.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import zoneinfo
from functools import cached_property, lru_cache
from typing import Any

from auditlog.mixins import AuditlogHistoryAdminMixin
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin import widgets as admin_widgets
from django.contrib.admin.options import InlineModelAdmin
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timesince import timeuntil

from orchestrator import beat_sync, history, operations, rollups
from orchestrator.changelist import BoundedChangeListMixin
from orchestrator.forms import ExceptionNamesField, KwargsFormField, PauseForm
from orchestrator.humanize import format_duration, retry_schedule
from orchestrator.models import ScheduledTask, TaskDefinition, TaskRun
from orchestrator.policies.retry import BackoffKind

logger = logging.getLogger(__name__)

RECENT_RUNS = 10
# Longer retry schedules are cut in the change form; the tail is summarised.
SHOWN_RETRY_DELAYS = 10

STATUS_COLOURS: dict[str, str] = {
    TaskRun.Status.RUNNING: "#2271b1",
    TaskRun.Status.SUCCEEDED: "#2e7d32",
    TaskRun.Status.RETRIED: "#b26a00",
    TaskRun.Status.FAILED: "#c62828",
    TaskRun.Status.SKIPPED: "#6b6b6b",
    TaskRun.Status.LOST: "#8e24aa",
    TaskRun.Status.QUEUED: "#2271b1",
    TaskRun.Status.CANCELLED: "#6b6b6b",
}


def status_badge(status: str | None) -> SafeString | str:
    """A run status as a coloured label, or the admin's empty marker."""
    if not status:
        return "-"
    try:
        label = TaskRun.Status(status).label
    except ValueError:
        label = status
    colour = STATUS_COLOURS.get(status, "inherit")
    return format_html('<span style="color: {}; font-weight: bold;">{}</span>', colour, label)


def format_timedelta(duration: dt.timedelta | None) -> str:
    return format_duration(None if duration is None else duration.total_seconds())


def admin_url(model: type[Any], view: str, *args: Any, query: str = "") -> str | None:
    """The URL of an admin view, or None when that model is not in the admin."""
    opts = model._meta
    try:
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args)
    except NoReverseMatch:
        return None
    return f"{url}?{query}" if query else url


def run_history_url(task_pk: int) -> str | None:
    return admin_url(TaskRun, "changelist", query=f"scheduled_task__id__exact={task_pk}")


@lru_cache(maxsize=1)
def _timezone_names() -> tuple[str, ...]:
    return tuple(sorted(zoneinfo.available_timezones()))


class TimezoneInput(forms.TextInput):
    """A text input that suggests IANA time zone names (a <datalist>, no JavaScript)."""

    datalist_id = "orchestrator-timezones"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__({"class": "vTextField", **(attrs or {}), "list": self.datalist_id})

    def render(
        self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None
    ) -> SafeString:
        options = format_html_join(
            "", '<option value="{}">', ((zone,) for zone in _timezone_names())
        )
        datalist = format_html('<datalist id="{}">{}</datalist>', self.datalist_id, options)
        return super().render(name, value, attrs, renderer) + datalist


class HistoryAdminMixin(AuditlogHistoryAdminMixin):
    """Every change made through this admin is recorded in the change history as the user's,
    from the admin; the change form's History button opens the object's change history."""

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        with history.changes_by(request.user, history.Source.ADMIN):
            return super().changeform_view(request, *args, **kwargs)

    def changelist_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        # List-editable saves and actions are made here.
        with history.changes_by(request.user, history.Source.ADMIN):
            return super().changelist_view(request, *args, **kwargs)

    def delete_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        with history.changes_by(request.user, history.Source.ADMIN):
            return super().delete_view(request, *args, **kwargs)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> Any:
        # auditlog's view fails on a missing object (a 500 for a stale or made-up id); the
        # admin's own views send the user back to the list with a message instead.
        if self.get_object(request, object_id) is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        return self.auditlog_history_view(request, object_id, extra_context)


# --- Task definitions -------------------------------------------------------------------------


@admin.register(TaskDefinition)
class TaskDefinitionAdmin(BoundedChangeListMixin, HistoryAdminMixin, admin.ModelAdmin):
    list_display = ["name", "import_path", "category", "enabled", "scheduled_task_count"]
    list_filter = ["category", "enabled"]
    search_fields = ["name", "import_path", "category", "description"]
    readonly_fields = ["created_at", "updated_at"]
    fields = [
        "name",
        "import_path",
        "category",
        "description",
        "enabled",
        "created_at",
        "updated_at",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskDefinition]:
        # distinct=True keeps the count right if another annotation ever joins a second relation.
        return (
            super()
            .get_queryset(request)
            .annotate(scheduled_task_total=Count("scheduled_tasks", distinct=True))
        )

    @admin.display(description="scheduled tasks", ordering="scheduled_task_total")
    def scheduled_task_count(self, obj: TaskDefinition) -> SafeString | int:
        total: int = getattr(obj, "scheduled_task_total", 0)
        url = admin_url(ScheduledTask, "changelist", query=f"task_definition__id__exact={obj.pk}")
        if not total or url is None:
            return total
        return format_html('<a href="{}">{}</a>', url, total)


# --- Scheduled tasks --------------------------------------------------------------------------


class RecentRunsFormSet(BaseInlineFormSet):
    """The latest ``RECENT_RUNS`` runs of one task.

    The inline formset filters its queryset by the parent task after the admin hands it over, and
    a sliced queryset cannot be filtered, so the slice is taken here, once the task is known. The
    primary keys are read in their own query rather than as a ``pk__in`` subquery with LIMIT,
    which MySQL and MariaDB refuse.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        runs = self.queryset  # set by BaseInlineFormSet.__init__
        if self.instance.pk is not None and runs is not None:
            latest = list(
                runs.order_by("-started_at", "-id").values_list("pk", flat=True)[:RECENT_RUNS]
            )
            self.queryset = runs.filter(pk__in=latest).order_by("-started_at", "-id")


RECENT_RUN_FIELDS = (
    "started",
    "status_label",
    "attempt_of",
    "trigger",
    "duration_text",
    "error_type",
    "worker",
)


class RecentRunsInline(admin.TabularInline):
    model = TaskRun
    formset = RecentRunsFormSet
    template = "admin/orchestrator/scheduledtask/recent_runs_inline.html"
    verbose_name = "recent run"
    verbose_name_plural = f"recent runs (latest {RECENT_RUNS})"
    fields = RECENT_RUN_FIELDS
    readonly_fields = RECENT_RUN_FIELDS
    extra = 0
    max_num = 0
    can_delete = False
    # The start time links to the run instead: Django's change link comes with the run's __str__,
    # which repeats what the columns say.
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="started at")
    def started(self, obj: TaskRun) -> SafeString | str:
        text = formats.localize(timezone.localtime(obj.started_at))
        url = admin_url(TaskRun, "change", obj.pk)
        return format_html('<a href="{}">{}</a>', url, text) if url else text

    @admin.display(description="status")
    def status_label(self, obj: TaskRun) -> SafeString | str:
        return status_badge(obj.status)

    @admin.display(description="attempt")
    def attempt_of(self, obj: TaskRun) -> str:
        return f"{obj.attempt}/{obj.max_attempts}"

    @admin.display(description="duration")
    def duration_text(self, obj: TaskRun) -> str:
        return format_timedelta(obj.duration)


class LastRunStatusFilter(admin.SimpleListFilter):
    """Filter on the status of each task's latest run (annotated by the admin's queryset)."""

    title = "last run status"
    parameter_name = "last_run_status"
    NEVER = "never"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [*TaskRun.Status.choices, (self.NEVER, "Never run")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = self.value()
        if value == self.NEVER:
            return queryset.filter(last_run_status__isnull=True)
        if value in TaskRun.Status.values:
            return queryset.filter(last_run_status=value)
        return None


POLICY_FIELDS = [
    "max_retries",
    "retry_backoff",
    "retry_delay",
    "retry_backoff_max",
    "retry_jitter",
    "time_limit",
    "priority",
    "queue",
    "expires",
]
# What the scheduler does with ticks missed during an outage (orchestrator.scheduler).
CATCH_UP_FIELDS = ["catch_up", "catch_up_limit", "missed_grace"]
LIST_EDITABLE = [
    "enabled",
    "max_retries",
    "retry_backoff",
    "retry_delay",
    "retry_backoff_max",
    "retry_jitter",
    "priority",
    "queue",
]


class ScheduledTaskChangeListForm(forms.ModelForm):
    """The row form of the list: narrow widgets so the policy columns fit side by side."""

    # The model's labels explain the maths for the change form; in a table cell they are too wide.
    retry_backoff = forms.ChoiceField(
        label="backoff", choices=[(kind.value, kind.value.capitalize()) for kind in BackoffKind]
    )

    class Meta:
        model = ScheduledTask
        fields = LIST_EDITABLE
        widgets = {
            "queue": forms.TextInput(attrs={"size": 10}),
            "max_retries": admin_widgets.AdminIntegerFieldWidget(attrs={"style": "width: 3.5em"}),
            "priority": admin_widgets.AdminIntegerFieldWidget(attrs={"style": "width: 3em"}),
        }


class ScheduledTaskForm(forms.ModelForm):
    retry_on = ExceptionNamesField(
        label="retry on", help_text=ScheduledTask._meta.get_field("retry_on").help_text
    )
    never_retry_on = ExceptionNamesField(
        label="never retry on", help_text=ScheduledTask._meta.get_field("never_retry_on").help_text
    )

    class Meta:
        model = ScheduledTask
        field_classes = {"kwargs": KwargsFormField}
        fields = [
            "name",
            "task_definition",
            "cron",
            "timezone",
            "enabled",
            "description",
            "kwargs",
            *POLICY_FIELDS,
            "retry_on",
            "never_retry_on",
            "overlap",
            "pause_after_failures",
            "paused",
            "pause_reason",
            "paused_until",
            *CATCH_UP_FIELDS,
            "notification_channels",
        ]
        widgets = {
            "timezone": TimezoneInput(),
            "cron": forms.TextInput(attrs={"class": "vTextField", "spellcheck": "false"}),
        }


@admin.register(ScheduledTask)
class ScheduledTaskAdmin(BoundedChangeListMixin, HistoryAdminMixin, admin.ModelAdmin):
    form = ScheduledTaskForm
    list_display = [
        "name",
        "task_definition",
        "schedule",
        "next_run",
        "last_run",
        "enabled",
        "max_retries",
        "retry_backoff",
        "retry_delay",
        "retry_backoff_max",
        "retry_jitter",
        "priority",
        "queue",
    ]
    list_display_links = ["name"]
    list_editable = LIST_EDITABLE
    # Each row renders its editable fields and its schedule in words: rendering, not the
    # database, is what a page of this list costs, so it shows 50 rows rather than 100.
    list_per_page = 50
    list_filter = [
        "enabled",
        "paused",
        LastRunStatusFilter,
        "task_definition__category",
        "task_definition",
        "queue",
        "retry_backoff",
    ]
    # kwargs are left out on purpose: searching them would let anyone who can list tasks probe
    # for secret values.
    search_fields = [
        "name",
        "description",
        "task_definition__name",
        "task_definition__import_path",
        "queue",
    ]
    list_select_related = ["task_definition"]
    filter_horizontal = ["notification_channels"]
    readonly_fields = [
        "schedule",
        "next_run",
        "periodic_task_link",
        "retry_schedule",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (
            "Schedule",
            {
                "fields": [
                    "name",
                    "task_definition",
                    "cron",
                    "timezone",
                    "enabled",
                    "description",
                    "schedule",
                    "next_run",
                    "periodic_task_link",
                ]
            },
        ),
        ("Parameters", {"fields": ["kwargs"]}),
        (
            "Retry policy",
            {
                "fields": [
                    "max_retries",
                    "retry_backoff",
                    "retry_delay",
                    "retry_backoff_max",
                    "retry_jitter",
                    "time_limit",
                    "retry_schedule",
                    "retry_on",
                    "never_retry_on",
                ]
            },
        ),
        (
            "Runs and pauses",
            {
                "fields": [
                    "overlap",
                    "pause_after_failures",
                    "paused",
                    "pause_reason",
                    "paused_until",
                ],
                "description": "A paused task keeps its schedule; each run is recorded as skipped "
                "with the reason, without alerts, until it resumes (by itself at the end, or "
                "with the Resume action).",
            },
        ),
        ("Routing", {"fields": ["priority", "queue", "expires"]}),
        (
            "Missed runs",
            {
                "fields": tuple(CATCH_UP_FIELDS),
                "description": "When beat was down or the broker refused messages, several "
                "ticks can fall due at once: catch-up decides which of them run. A tick without "
                "a run after the grace period counts as missed.",
            },
        ),
        ("Notifications", {"fields": ["notification_channels"]}),
        ("Timestamps", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]
    inlines = [RecentRunsInline]
    actions = ["run_now", "enable", "disable", "pause", "resume", "sync_to_beat"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ScheduledTask]:
        # The latest run's status and time as two correlated subqueries: one SQL statement for the
        # whole page however many tasks it lists. select_related serves next_run (it reads the
        # definition's enabled flag) and the list_editable POST, which builds its rows from here.
        latest = TaskRun.objects.filter(scheduled_task=OuterRef("pk")).order_by(
            "-started_at", "-id"
        )
        return (
            super()
            .get_queryset(request)
            .select_related("task_definition")
            .annotate(
                last_run_status=Subquery(latest.values("status")[:1]),
                last_run_at=Subquery(latest.values("started_at")[:1]),
            )
        )

    def get_changelist_form(self, request: HttpRequest, **kwargs: Any) -> type[forms.ModelForm]:
        kwargs.setdefault("form", ScheduledTaskChangeListForm)
        return super().get_changelist_form(request, **kwargs)

    def get_inlines(
        self, request: HttpRequest, obj: ScheduledTask | None
    ) -> list[type[InlineModelAdmin[Any, Any]]]:
        # A task being added has no runs.
        return list(self.inlines) if obj is not None else []

    def has_run_permission(self, request: HttpRequest) -> bool:
        """Whether the user holds ``orchestrator.run_scheduledtask`` (shared with dashboard/API)."""
        return request.user.has_perm(f"{self.opts.app_label}.run_scheduledtask")

    # --- columns and read-only fields ---

    @admin.display(description="schedule")
    def schedule(self, obj: ScheduledTask) -> str:
        if not obj.cron:
            return "-"
        return f"{obj.describe_schedule()} ({obj.timezone})"

    @admin.display(description="next run")
    def next_run(self, obj: ScheduledTask) -> SafeString | str:
        if obj.pk is None:
            return "-"
        if not obj.is_runnable:
            return "disabled" if not obj.enabled else "definition disabled"
        when = obj.next_run_at()
        if when is None:
            return "never"
        now = timezone.now()
        # timeuntil() rounds down to whole minutes and would say "0 minutes".
        wait = "under a minute" if when - now < dt.timedelta(minutes=1) else timeuntil(when, now)
        return format_html(
            '<span style="white-space: nowrap;">{}</span><br><small>in {}</small>',
            f"{when:%Y-%m-%d %H:%M} {when.tzname()}",
            wait,
        )

    @admin.display(description="last run", ordering="last_run_at")
    def last_run(self, obj: ScheduledTask) -> SafeString | str:
        """The latest run's status and start time, linked to the task's run history."""
        status = getattr(obj, "last_run_status", None)
        started: dt.datetime | None = getattr(obj, "last_run_at", None)
        if not status or started is None:
            return "never"
        url = run_history_url(obj.pk)
        when = formats.localize(timezone.localtime(started))
        badge = status_badge(status)
        if url is None:
            return format_html("{}<br><small>{}</small>", badge, when)
        return format_html('<a href="{}">{}</a><br><small>{}</small>', url, badge, when)

    @admin.display(description="periodic task (beat)")
    def periodic_task_link(self, obj: ScheduledTask) -> SafeString | str:
        periodic_task = obj.periodic_task if obj.periodic_task_id else None
        if periodic_task is None:
            return "not synced yet" if obj.pk else "-"
        url = admin_url(type(periodic_task), "change", periodic_task.pk)
        label = f"{periodic_task.name} ({'enabled' if periodic_task.enabled else 'disabled'})"
        if url is None:
            return label
        return format_html('<a href="{}">{}</a>', url, label)

    @admin.display(description="retry delays")
    def retry_schedule(self, obj: ScheduledTask) -> str:
        try:
            return retry_schedule(obj.retry_policy(), SHOWN_RETRY_DELAYS).summary
        except (TypeError, ValueError):
            return "-"  # the form reports the invalid field

    # --- actions ---

    @admin.action(description="Run now", permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        sent = 0
        failures: list[str] = []
        not_runnable: list[str] = []
        for task in queryset:
            try:
                task.run_now()
            except Exception as err:
                # One broker or dispatcher error must not stop the other selected tasks.
                logger.exception("Run now failed for scheduled task %r", task.name)
                failures.append(f"{task.name} ({type(err).__name__}: {err})")
            else:
                sent += 1
                if not task.is_runnable:
                    not_runnable.append(task.name)
        if sent:
            self.message_user(
                request,
                f"Sent {sent} run{'s' if sent != 1 else ''} to the workers.",
                messages.SUCCESS,
            )
        if not_runnable:
            # The dispatcher sends them anyway and records a skipped run: say so before the
            # operator goes looking for output that will never come.
            self.message_user(
                request,
                "Disabled, so the worker will skip them: " + ", ".join(not_runnable) + ".",
                messages.WARNING,
            )
        if failures:
            self.message_user(request, "Could not send: " + "; ".join(failures), messages.ERROR)

    @admin.action(description="Enable", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        self._set_enabled(request, queryset, enabled=True)

    @admin.action(description="Disable", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        self._set_enabled(request, queryset, enabled=False)

    @admin.action(description="Pause (one reason for all)", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> Any:
        """Ask for the reason (and end) on a page of its own, then pause every selected task."""
        form = PauseForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            try:
                count = operations.pause(
                    queryset, form.cleaned_data["reason"], form.cleaned_data["until"], request.user
                )
            except ValidationError as err:
                for messages_of_field in err.message_dict.values():
                    for message in messages_of_field:
                        form.add_error(None, message)
            else:
                self.message_user(
                    request,
                    f"Paused {count} scheduled task{'s' if count != 1 else ''}.",
                    messages.SUCCESS,
                )
                return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Pause scheduled tasks",
            "form": form,
            "tasks": queryset,
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/orchestrator/scheduledtask/pause.html", context)

    @admin.action(description="Resume", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        count = operations.resume(queryset, request.user)
        self.message_user(
            request,
            f"Resumed {count} scheduled task{'s' if count != 1 else ''}.",
            messages.SUCCESS,
        )

    @admin.action(description="Sync to beat", permissions=["change"])
    def sync_to_beat(self, request: HttpRequest, queryset: QuerySet[ScheduledTask]) -> None:
        pks = list(queryset.values_list("pk", flat=True))
        try:
            report = beat_sync.beat_sync(ScheduledTask.objects.filter(pk__in=pks))
        except Exception as err:
            logger.exception("beat_sync failed from the admin")
            self.message_user(
                request, f"Beat sync failed: {type(err).__name__}: {err}", messages.ERROR
            )
            return
        self._report_sync(request, report, prefix="Beat sync")

    def _set_enabled(
        self, request: HttpRequest, queryset: QuerySet[ScheduledTask], *, enabled: bool
    ) -> None:
        verb = "Enabled" if enabled else "Disabled"
        try:
            result = operations.set_enabled(queryset, enabled)
        except Exception as err:
            logger.exception("%s action failed", verb)
            self.message_user(
                request,
                f"Nothing changed: updating beat failed ({type(err).__name__}: {err}).",
                messages.ERROR,
            )
            return
        changed = result.changed
        self.message_user(
            request,
            f"{verb} {changed} scheduled task{'s' if changed != 1 else ''}"
            f" ({result.unchanged} already {verb.lower()}).",
            messages.SUCCESS,
        )
        self._report_sync(request, result.sync, prefix="Beat", quiet=True)

    def _report_sync(
        self, request: HttpRequest, report: Any, *, prefix: str, quiet: bool = False
    ) -> None:
        errors = list(getattr(report, "errors", []) or [])
        if not quiet or errors:
            self.message_user(
                request,
                f"{prefix}: {report.created} created, {report.updated} updated, "
                f"{report.deleted} deleted, {report.unchanged} unchanged.",
                messages.WARNING if errors else messages.SUCCESS,
            )
        for error in errors:
            self.message_user(request, f"{prefix}: {error}", messages.ERROR)


# --- Run history ------------------------------------------------------------------------------


class EstimatedCountPaginator(Paginator):
    """A paginator that never counts millions of rows.

    It counts at most ``COUNT_CAP`` rows (``SELECT COUNT(*)`` over a ``LIMIT``), so the pages
    reach that far and the filters narrow the rest down. Unfiltered, when the database's
    estimate of the table's size (:func:`orchestrator.rollups.estimated_rows`; PostgreSQL,
    MariaDB, MySQL) is larger than that, the estimate is the count, and every page is reachable.
    """

    COUNT_CAP = 10_000

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        if not isinstance(rows, QuerySet):
            return super().count
        if not rows.query.where:
            estimate = rollups.estimated_rows(rows.model, using=rows.db)
            if estimate is not None and estimate > self.COUNT_CAP:
                return estimate
        return rows.order_by()[: self.COUNT_CAP].count()


@admin.register(TaskRun)
class TaskRunAdmin(BoundedChangeListMixin, admin.ModelAdmin):
    """The run history: written by the dispatcher only, so it can be viewed, never edited (an
    operator may cancel a run that has not finished)."""

    actions = ["cancel_runs"]

    list_display = [
        "scheduled_task",
        "attempt_of",
        "status_label",
        "trigger",
        "started_at",
        "duration_text",
        "error_type",
        "worker",
    ]
    list_filter = [
        "status",
        "trigger",
        "scheduled_task",
        ("started_at", admin.DateFieldListFilter),
    ]
    # No date_hierarchy: its month and day links come from a SELECT DISTINCT over every run of
    # the year. The started_at filter above covers today, the past 7 days, this month and year.
    search_fields = [
        "scheduled_task__name",
        "error_type",
        "error_message",
        "celery_task_id",
    ]
    list_select_related = ["scheduled_task"]
    # A COUNT(*) over the whole history on every page is what makes large histories slow: the
    # paginator estimates the unfiltered count and caps the filtered one.
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "scheduled_task",
                    "status_label",
                    "attempt_of",
                    "trigger",
                    "scheduled_for",
                    "started_at",
                    "finished_at",
                    "duration_text",
                    "next_retry_at",
                    "retry_sent_at",
                    "task_version",
                    "triggered_by",
                    "kwargs_override",
                    "cancelled_by",
                    "note",
                ]
            },
        ),
        (
            "Worker",
            {"fields": ["celery_task_id", "worker", "queue", "priority", "time_limit"]},
        ),
        (
            "Outcome",
            {"fields": ["result_display", "error_type", "error_display", "traceback_display"]},
        ),
        ("Log", {"fields": ["log_display"]}),
    ]
    # The history is read-only: every field shown is.
    readonly_fields = [
        name
        for _, options in fieldsets
        for group in options["fields"]
        for name in ((group,) if isinstance(group, str) else group)
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # Deleting runs (orchestrator.delete_taskrun) takes them out of the per-task aggregates in
    # the same transaction, so the pages and /metrics stay exact.
    def delete_model(self, request: HttpRequest, obj: TaskRun) -> None:
        with transaction.atomic():
            rollups.forget_runs([obj.pk])
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[TaskRun]) -> None:
        with transaction.atomic():
            rollups.forget_runs(queryset)
            super().delete_queryset(request, queryset)

    def has_run_permission(self, request: HttpRequest) -> bool:
        """Cancelling needs ``orchestrator.run_scheduledtask``, like running."""
        return request.user.has_perm(f"{self.opts.app_label}.run_scheduledtask")

    @admin.action(description="Cancel (queued, running or waiting to retry)", permissions=["run"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[TaskRun]) -> None:
        cancelled = [run for run in queryset if run.cancel(user=request.user)]
        skipped = queryset.count() - len(cancelled)
        if cancelled:
            self.message_user(
                request,
                f"Cancelled {len(cancelled)} run{'s' if len(cancelled) != 1 else ''}.",
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request,
                f"{skipped} selected run{'s' if skipped != 1 else ''} had already finished.",
                messages.WARNING,
            )

    @admin.display(description="status", ordering="status")
    def status_label(self, obj: TaskRun) -> SafeString | str:
        return status_badge(obj.status)

    @admin.display(description="attempt", ordering="attempt")
    def attempt_of(self, obj: TaskRun) -> str:
        return f"{obj.attempt}/{obj.max_attempts}"

    @admin.display(description="duration", ordering="duration")
    def duration_text(self, obj: TaskRun) -> str:
        return format_timedelta(obj.duration)

    @admin.display(description="result")
    def result_display(self, obj: TaskRun) -> SafeString | str:
        if obj.result is None:
            return "-"
        text = json.dumps(obj.result, indent=2, ensure_ascii=False, default=str)
        return format_html("<pre>{}</pre>", text)

    @admin.display(description="error message")
    def error_display(self, obj: TaskRun) -> SafeString | str:
        if not obj.error_message:
            return "-"
        return format_html('<pre style="white-space: pre-wrap;">{}</pre>', obj.error_message)

    @admin.display(description="traceback")
    def traceback_display(self, obj: TaskRun) -> SafeString | str:
        if not obj.traceback:
            return "-"
        return format_html("<pre>{}</pre>", obj.traceback)

    @admin.display(description="log")
    def log_display(self, obj: TaskRun) -> SafeString | str:
        """What the function logged and printed, escaped, in a scrolling monospace block."""
        if not obj.log:
            return "-"
        return format_html(
            '<pre class="orchestrator-run-log" style="white-space: pre-wrap; max-height: 40em; '
            'overflow: auto;">{}</pre>',
            obj.log,
        )

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskRun]:
        runs = super().get_queryset(request)
        match = getattr(request, "resolver_match", None)
        if match is not None and match.url_name == f"{self.opts.app_label}_taskrun_changelist":
            # A page of 100 runs would read up to 100 logs that the list never shows.
            runs = runs.defer("log")
        return runs


def _notifications_admin_exists() -> bool:
    # The notifications admin is written in parallel: only its absence is tolerated. An import
    # error raised from inside it still surfaces, at the import below.
    try:
        return importlib.util.find_spec("orchestrator.notifications.admin") is not None
    except ModuleNotFoundError as err:
        if err.name != "orchestrator.notifications":
            raise
        return False


if _notifications_admin_exists():
    from orchestrator.notifications import admin as notifications_admin  # noqa: F401
