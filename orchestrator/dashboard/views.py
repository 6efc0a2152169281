"""Dashboard pages and actions: thin adapters over the models, ``stats`` and the operations.

Every page is staff only (anonymous users go to the admin login) and needs the permission to view
scheduled tasks; Run now (with or without arguments) and Cancel need
``orchestrator.run_scheduledtask``, Enable/Disable and Pause/Resume the change permission,
exactly as in the admin and the API. Actions are plain POST forms with CSRF tokens, so
everything works without JavaScript; they answer with a redirect back to the page they came
from, or show the task page again with the form's errors. Every change is recorded in the
change history as the user's, from the dashboard.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import DatabaseError, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST, require_safe

from orchestrator import charts, history, metrics, operations, watchdog
from orchestrator.access import can_view_runs, can_view_scheduled_tasks
from orchestrator.conf import conf
from orchestrator.dashboard import stats
from orchestrator.forms import PauseForm, RunWithArgumentsForm
from orchestrator.humanize import format_duration, retry_schedule
from orchestrator.models import ScheduledTask, TaskRun
from orchestrator.notifications.registry import mask_target
from orchestrator.sanitize import UnreadableJSON, json_preview
from orchestrator.scheduler.status import scheduler_status

logger = logging.getLogger(__name__)

RUN_PERM = "orchestrator.run_scheduledtask"
CHANGE_PERM = "orchestrator.change_scheduledtask"
RUNS_PER_PAGE = 50
# The overview lists this many tasks a page: a page's cost (its rates, sparklines, schedules in
# words) depends on it, not on how many tasks there are.
TASKS_PER_PAGE = 50
RETRY_DELAYS_SHOWN = 5
HISTORY_SHOWN = 20
# /health/ says "down" when the watchdog has not run for this many of its intervals.
WATCHDOG_STALE_PASSES = 3
# Arguments are shown in full only on the admin's change form: a megabyte of JSON would make
# this page unusable.
KWARGS_SHOWN = 2000


def can_view(user: Any) -> bool:
    # The admin lets a user with the change permission view too; so does the dashboard.
    return can_view_scheduled_tasks(user)


def _require(allowed: bool) -> None:
    if not allowed:
        raise PermissionDenied


def _admin_url(name: str, *args: Any) -> str | None:
    # The dashboard works in projects that do not mount the admin; links then just disappear.
    try:
        return reverse(f"admin:{name}", args=args)
    except NoReverseMatch:
        return None


def _back(request: HttpRequest, fallback: str) -> HttpResponseRedirect:
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = fallback
    return HttpResponseRedirect(target)


def _filter_value(request: HttpRequest, name: str) -> str:
    # PostgreSQL refuses a NUL in a query parameter (a 500); no stored value holds one anyway.
    return request.GET.get(name, "").replace("\x00", "")


@require_safe
def health(request: HttpRequest) -> JsonResponse:
    """Is scheduling working? For load balancers, Kubernetes probes and uptime monitors.

    No login: it names no task and shows no data. ``down`` (HTTP 503) when the scheduler's
    heartbeat is stale or the watchdog has not run a pass recently; ``ok`` (200) otherwise.
    """
    try:
        scheduler = scheduler_status()
        watchdog_age = watchdog.last_pass_age()
    except DatabaseError:
        # The database is the schedule: without it nothing runs.
        return JsonResponse({"status": "down", "error": "database unreachable"}, status=503)
    watchdog_stale = watchdog_age is None or watchdog_age > WATCHDOG_STALE_PASSES * max(
        conf.WATCHDOG_INTERVAL, 1
    )
    healthy = not scheduler.stale and not watchdog_stale
    body = {
        "status": "ok" if healthy else "down",
        "scheduler": {
            "leader": scheduler.leader,
            "heartbeat_age_s": _rounded(scheduler.heartbeat_age_s),
        },
        "watchdog": {"last_pass_age_s": _rounded(watchdog_age)},
    }
    response = JsonResponse(body, status=200 if healthy else 503)
    response["Cache-Control"] = "no-store"
    return response


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


@require_safe
@staff_member_required
def overview(request: HttpRequest) -> HttpResponse:
    """Every scheduled task with its state, schedule, last run, success rate and recent runs."""
    _require(can_view(request.user))
    filters = stats.Filters(
        category=_filter_value(request, "category"),
        queue=_filter_value(request, "queue"),
        status=_filter_value(request, "status"),
        enabled=_filter_value(request, "enabled"),
    )
    now = timezone.now()
    # Run errors follow the API's rule for the run history (orchestrator.access).
    show_runs = can_view_runs(request.user)
    page = Paginator(stats.overview_tasks(filters), TASKS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    tasks: list[Any] = list(page.object_list)
    ids = [task.pk for task in tasks]
    rates = stats.success_rates(ids, now=now)
    recent = stats.recent_runs(ids, now=now)
    labels = dict(TaskRun.Status.choices)
    rows = [
        {
            "task": task,
            "runnable": task.is_runnable,
            "paused": task.is_paused(now),
            "schedule": task.describe_schedule(),
            "next_run": task.next_run_at(now),
            "last_status": task.last_run_status,
            "last_status_label": labels.get(task.last_run_status or "", ""),
            "last_run_at": task.last_run_at,
            "rate": rates.get(task.pk, stats.SuccessRate(0, 0)),
            # charts.py escapes everything it interpolates.
            "chart": mark_safe(charts.sparkline(recent.get(task.pk, []))),
        }
        for task in tasks
    ]
    context = {
        "rows": rows,
        "page": page,
        # The filters, for the page links to keep them.
        "filter_query": urlencode(
            {
                name: value
                for name in ("category", "queue", "status", "enabled")
                if (value := getattr(filters, name))
            }
        ),
        "filters": filters,
        "choices": stats.filter_choices(),
        "status_choices": [*TaskRun.Status.choices, (stats.NEVER_RUN, "Never run")],
        "can_view_runs": show_runs,
        "failures": list(stats.recent_failures(stats.overview_tasks(filters))) if show_runs else [],
        "can_run": request.user.has_perm(RUN_PERM),
        "can_change": request.user.has_perm(CHANGE_PERM),
        "admin_url": _admin_url("orchestrator_scheduledtask_changelist"),
        "scheduler": scheduler_status(),
        "stale_after": conf.SCHEDULER_STALE_AFTER,
        "now": now,
    }
    return render(request, "orchestrator/dashboard.html", context)


@require_safe
@staff_member_required
def task_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One task: its run history (paginated), chart, retry policy, channels, change history,
    its controls and admin links."""
    _require(can_view(request.user))
    task = get_object_or_404(ScheduledTask.objects.select_related("task_definition"), pk=pk)
    return _task_page(request, task)


def _editable_kwargs(task: ScheduledTask) -> str:
    """The task's kwargs to start the Run-with-arguments form from; empty when they are too
    long to edit in a text box (the form then starts from nothing)."""
    if isinstance(task.kwargs, UnreadableJSON):  # a row written around validation
        return ""
    try:
        text = json.dumps(task.kwargs, sort_keys=True)
    except (TypeError, ValueError, RecursionError):  # a row written around validation
        return ""
    return text if len(text) <= KWARGS_SHOWN else ""


def _task_page(
    request: HttpRequest,
    task: ScheduledTask,
    *,
    pause_form: PauseForm | None = None,
    run_form: RunWithArgumentsForm | None = None,
    status: int = 200,
) -> HttpResponse:
    now = timezone.now()
    # Run errors follow the API's rule for the run history (orchestrator.access).
    show_runs = can_view_runs(request.user)
    runs = (
        TaskRun.objects.filter(scheduled_task=task)
        .select_related("triggered_by")
        .defer("log")  # shown on each run's own page
        .order_by("-started_at", "-id")
    )
    if not show_runs:
        runs = runs.none()
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    # (run, its duration, its own arguments as JSON): what the history table shows of each run.
    run_rows = [
        (
            run,
            format_duration(None if run.duration is None else run.duration.total_seconds()),
            None
            if run.kwargs_override is None
            else json_preview(run.kwargs_override, KWARGS_SHOWN),
        )
        for run in page.object_list
    ]
    try:
        policy = task.retry_policy()
        delays = retry_schedule(policy, RETRY_DELAYS_SHOWN)
        policy_error = ""
    except (TypeError, ValueError) as err:
        # A policy field edited in the database to a value it refuses: show the page and say so
        # (the dispatcher refuses to run the task for the same reason).
        policy, delays = None, None
        policy_error = f"This retry policy is invalid: {err}. Fix it in the admin."
    channels, uses_defaults = task.notification_targets()
    context = {
        "task": task,
        "runnable": task.is_runnable,
        "schedule": task.describe_schedule(),
        "next_run": task.next_run_at(now),
        "rate": stats.task_success_rate(task, now=now),
        "page": page,
        "run_rows": run_rows,
        "can_view_runs": show_runs,
        "chart": mark_safe(charts.duration_chart(stats.task_history_points(task))),
        "kwargs_json": json_preview(task.kwargs, KWARGS_SHOWN),
        "policy": policy,
        "policy_error": policy_error,
        "retry_delays": delays.delays if delays else (),
        "more_retries": delays.more if delays else 0,
        "channels": [
            {"channel": channel, "target": mask_target(channel.kind, channel.target)}
            for channel in channels
        ],
        "uses_default_channels": uses_defaults,
        "can_run": request.user.has_perm(RUN_PERM),
        "can_change": request.user.has_perm(CHANGE_PERM),
        "paused": task.is_paused(now),
        "pause_form": pause_form or PauseForm(),
        "run_form": run_form or RunWithArgumentsForm(initial={"kwargs": _editable_kwargs(task)}),
        "changes": [history.describe(entry) for entry in history.entries_for(task)[:HISTORY_SHOWN]],
        # Where the page's forms come back to: this page, also when it is shown again by a
        # POST whose form had errors (the request's own path is then the action's).
        "here": reverse("orchestrator:task-detail", args=[task.pk])
        + (f"?page={page.number}" if page.number > 1 else ""),
        "admin_task_url": _admin_url("orchestrator_scheduledtask_change", task.pk),
        "admin_definition_url": _admin_url(
            "orchestrator_taskdefinition_change", task.task_definition_id
        ),
        "admin_runs_url": _admin_url("orchestrator_taskrun_changelist"),
        "now": now,
    }
    return render(request, "orchestrator/task_detail.html", context, status=status)


@require_safe
@staff_member_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One run: its facts, its outcome (result or error and traceback) and its log."""
    # A run's error, result and log follow the API's rule for the run history.
    _require(can_view(request.user) and can_view_runs(request.user))
    run = get_object_or_404(
        TaskRun.objects.select_related(
            "scheduled_task", "scheduled_task__task_definition", "triggered_by", "cancelled_by"
        ),
        pk=pk,
    )
    context = {
        "run": run,
        "task": run.scheduled_task,
        "duration": format_duration(None if run.duration is None else run.duration.total_seconds()),
        "result_json": None if run.result is None else json_preview(run.result, 20000, indent=2),
        "kwargs_json": None
        if run.kwargs_override is None
        else json_preview(run.kwargs_override, KWARGS_SHOWN),
        "can_run": request.user.has_perm(RUN_PERM),
        "admin_run_url": _admin_url("orchestrator_taskrun_change", run.pk),
        "log_level": logging.getLevelName(conf.RUN_LOG_LEVEL),
        "here": reverse("orchestrator:run-detail", args=[run.pk]),
    }
    return render(request, "orchestrator/run_detail.html", context)


@require_POST
@staff_member_required
def run_now(request: HttpRequest, pk: int) -> HttpResponse:
    """Send one run of the task to the workers now (trigger "manual"), with the task's own
    arguments, or with those of the form (``kwargs``) for this run only."""
    _require(request.user.has_perm(RUN_PERM))
    task = get_object_or_404(ScheduledTask.objects.select_related("task_definition"), pk=pk)
    fallback = reverse("orchestrator:task-detail", args=[task.pk])
    kwargs = None
    if "kwargs" in request.POST:
        form = RunWithArgumentsForm(request.POST)
        if not form.is_valid():
            return _task_page(request, task, run_form=form)
        kwargs = form.cleaned_data["kwargs"]
    try:
        with transaction.atomic():
            result = task.run_now(kwargs=kwargs, user=request.user)
    except ValidationError as err:
        form = RunWithArgumentsForm(request.POST)
        form.is_valid()
        for message in err.message_dict.get("kwargs", err.messages):
            form.add_error("kwargs", message)
        return _task_page(request, task, run_form=form)
    except Exception as err:  # the broker being down must not become a 500 page
        logger.exception("Run now of scheduled task %s (%s) failed", task.pk, task.name)
        messages.error(request, f"Could not send “{task}” to the workers: {type(err).__name__}.")
        return _back(request, fallback)
    note = "" if task.is_runnable else " It is disabled, so the worker will record it as skipped."
    messages.success(request, f"“{task}” was sent to the workers (Celery task {result.id}).{note}")
    return _back(request, fallback)


def _set_enabled(request: HttpRequest, pk: int, enabled: bool) -> HttpResponseRedirect:
    _require(request.user.has_perm(CHANGE_PERM))
    task = get_object_or_404(ScheduledTask, pk=pk)
    fallback = reverse("orchestrator:task-detail", args=[task.pk])
    try:
        with history.changes_by(request.user, history.Source.DASHBOARD):
            operations.set_enabled([task.pk], enabled)
    except Exception as err:
        logger.exception("Setting enabled=%s on scheduled task %s failed", enabled, task.pk)
        messages.error(request, f"Nothing changed: updating beat failed ({type(err).__name__}).")
        return _back(request, fallback)
    messages.success(request, f"“{task}” is {'enabled' if enabled else 'disabled'}.")
    return _back(request, fallback)


@require_POST
@staff_member_required
def enable(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Enable the task and its beat entry (:func:`orchestrator.operations.set_enabled`)."""
    return _set_enabled(request, pk, True)


@require_POST
@staff_member_required
def disable(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Disable the task and its beat entry (:func:`orchestrator.operations.set_enabled`)."""
    return _set_enabled(request, pk, False)


@require_POST
@staff_member_required
def pause(request: HttpRequest, pk: int) -> HttpResponse:
    """Pause the task with a reason and an optional end (the form's errors on the task page)."""
    _require(request.user.has_perm(CHANGE_PERM))
    task = get_object_or_404(ScheduledTask.objects.select_related("task_definition"), pk=pk)
    form = PauseForm(request.POST)
    if form.is_valid():
        try:
            task.pause(
                form.cleaned_data["reason"],
                until=form.cleaned_data["until"],
                user=request.user,
                source=history.Source.DASHBOARD,
            )
        except ValidationError as err:
            fields = {"pause_reason": "reason", "paused_until": "until"}
            for field, field_messages in err.message_dict.items():
                for message in field_messages:
                    form.add_error(fields.get(field), message)
    if not form.is_valid():
        return _task_page(request, task, pause_form=form)
    messages.success(request, f"“{task}” is paused: its runs are skipped until it resumes.")
    return _back(request, reverse("orchestrator:task-detail", args=[task.pk]))


@require_POST
@staff_member_required
def resume(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """End the task's pause."""
    _require(request.user.has_perm(CHANGE_PERM))
    task = get_object_or_404(ScheduledTask, pk=pk)
    if task.paused:
        task.resume(user=request.user, source=history.Source.DASHBOARD)
    messages.success(request, f"“{task}” is resumed.")
    return _back(request, reverse("orchestrator:task-detail", args=[task.pk]))


@require_POST
@staff_member_required
def cancel_run(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    """Cancel a queued or running run, or the retry a failed attempt waits for."""
    _require(request.user.has_perm(RUN_PERM))
    run = get_object_or_404(TaskRun, pk=pk)
    fallback = reverse("orchestrator:task-detail", args=[run.scheduled_task_id])
    if run.cancel(user=request.user):
        messages.success(request, f"Run {run.pk} is cancelled.")
    else:
        messages.warning(request, f"Run {run.pk} had already finished; nothing was cancelled.")
    return _back(request, fallback)


def metrics_access(request: HttpRequest) -> int:
    """200 if ``request`` may read the metrics, else the status to answer: 401 without
    credentials, 403 with wrong ones.

    A bearer token is compared with ``ORCHESTRATOR["METRICS_TOKEN"]`` in constant time (no
    token configured: no token is right); otherwise a staff user who may see the run history
    (:func:`orchestrator.access.can_view_runs`, the rule of the run pages and the API) may
    read them.
    """
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, given = header.partition(" ")
        expected = conf.METRICS_TOKEN
        if scheme.lower() != "bearer" or not expected:
            return 403
        matches = hmac.compare_digest(given.strip().encode(), expected.encode())
        return 200 if matches else 403
    user = request.user
    if not user.is_authenticated:
        return 401
    return 200 if user.is_staff and can_view_runs(user) else 403


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus metrics (text format), read from the database on each scrape."""
    status = metrics_access(request)
    if status == 401:
        response = HttpResponse("Authentication required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="orchestrator metrics"'
        return response
    if status == 403:
        return HttpResponse("Forbidden.\n", status=403, content_type="text/plain")
    response = HttpResponse(metrics.exposition(), content_type=metrics.CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response
