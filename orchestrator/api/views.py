"""API viewsets: thin adapters over the models, which validate and sync beat on save."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.apps import apps
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import ProtectedError, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import exceptions, parsers, status, viewsets
from rest_framework.authentication import (
    BaseAuthentication,
    SessionAuthentication,
    TokenAuthentication,
)
from rest_framework.decorators import action
from rest_framework.pagination import BasePagination, CursorPagination, PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from orchestrator import history
from orchestrator.api.permissions import (
    CanChangeScheduledTask,
    CanRunScheduledTask,
    ModelPermissions,
    RunPermissions,
)
from orchestrator.api.schema import ViewSchema
from orchestrator.api.serializers import (
    HistoryEntrySerializer,
    NotificationChannelSerializer,
    PauseRequestSerializer,
    RunAcceptedSerializer,
    RunRequestSerializer,
    ScheduledTaskSerializer,
    TaskDefinitionSerializer,
    TaskRunDetailSerializer,
    TaskRunSerializer,
    as_drf_error,
)
from orchestrator.models import NotificationChannel, ScheduledTask, TaskDefinition, TaskRun
from orchestrator.validators import MAX_DATABASE_INTEGER, parse_id

logger = logging.getLogger(__name__)


def _authentication_classes() -> list[type[BaseAuthentication]]:
    # Token first: an anonymous request then gets 401 with a WWW-Authenticate header, not 403.
    classes: list[type[BaseAuthentication]] = [SessionAuthentication]
    if apps.is_installed("rest_framework.authtoken"):
        classes.insert(0, TokenAuthentication)
    return classes


AUTHENTICATION_CLASSES = _authentication_classes()


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with JSON nested past Python's recursion limit as a 400.

    ``json.loads`` raises RecursionError for it, which DRF's parser does not catch (a 500).
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None


PARSER_CLASSES = [JSONParser, parsers.FormParser, parsers.MultiPartParser]


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class Unavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "unavailable"


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class RunPagination(CursorPagination):
    """Runs newest first; a cursor, because counting a history of millions of rows is slow."""

    ordering = ("-started_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class OrchestratorViewSet(viewsets.GenericViewSet):
    """What every endpoint shares, set here rather than read from the project's DRF settings."""

    authentication_classes = AUTHENTICATION_CLASSES
    parser_classes = PARSER_CLASSES
    permission_classes = [ModelPermissions]
    pagination_class: type[BasePagination] | None = Pagination
    schema = ViewSchema()

    # Writes are atomic: a model save syncs beat in its post_save receiver, and a failing sync
    # must not leave the row changed behind a 500. Each is recorded in the change history as
    # the request's user's, from the API.
    def perform_create(self, serializer: BaseSerializer) -> None:
        with transaction.atomic(), self.changes():
            serializer.save()

    def perform_update(self, serializer: BaseSerializer) -> None:
        with transaction.atomic(), self.changes():
            serializer.save()

    def perform_destroy(self, instance: Any) -> None:
        try:
            with transaction.atomic(), self.changes():
                instance.delete()
        except ProtectedError as err:
            used_by = ", ".join(sorted(str(obj) for obj in err.protected_objects)[:10])
            raise Conflict(f"“{instance}” is still used by: {used_by}.") from None

    def changes(self) -> Any:
        return history.changes_by(self.request.user, history.Source.API)


class TaskDefinitionViewSet(OrchestratorViewSet, viewsets.ModelViewSet):
    """Callables that scheduled tasks may run (their module must be on the allow-list)."""

    queryset = TaskDefinition.objects.order_by("name")
    serializer_class = TaskDefinitionSerializer


class ScheduledTaskViewSet(OrchestratorViewSet, viewsets.ModelViewSet):
    """Scheduled tasks; saving one syncs its beat entry, exactly as the admin does."""

    queryset = (
        ScheduledTask.objects.select_related("task_definition")
        .prefetch_related("notification_channels")
        .order_by("name")
    )
    serializer_class = ScheduledTaskSerializer
    schema_overrides = {
        "run": {
            "request": RunRequestSerializer,
            "responses": {
                202: RunAcceptedSerializer,
                400: OpenApiResponse(description="The kwargs do not fit the function."),
                503: OpenApiResponse(description="The broker could not be reached."),
            },
        },
        "pause": {
            "request": PauseRequestSerializer,
            "responses": {
                200: ScheduledTaskSerializer,
                400: OpenApiResponse(description="No reason, or an end that has passed."),
            },
        },
        "resume": {"request": None, "responses": {200: ScheduledTaskSerializer}},
        "history": {"request": None, "responses": {200: HistoryEntrySerializer(many=True)}},
    }

    @action(detail=True, methods=["post"], permission_classes=[CanRunScheduledTask])
    def run(self, request: Request, pk: str | None = None) -> Response:
        """Send one run of the task to the workers now, outside its schedule (trigger "api").

        The body may give ``kwargs`` that replace the task's for this run only.
        """
        # Disabled tasks are sent too, as from the admin: the worker records them as skipped.
        task = self.get_object()
        body = RunRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        kwargs = body.validated_data.get("kwargs")
        try:
            with transaction.atomic():
                result = task.run_now(kwargs=kwargs, user=request.user, trigger=TaskRun.Trigger.API)
        except DjangoValidationError as err:
            raise as_drf_error(err) from None
        except Exception as err:
            logger.exception("API run of scheduled task %s (%s) failed", task.pk, task.name)
            raise Unavailable(
                f"Could not send “{task}” to the workers ({type(err).__name__})."
            ) from None
        return Response({"celery_task_id": result.id}, status=status.HTTP_202_ACCEPTED)

    @action(detail=True, methods=["post"], permission_classes=[CanChangeScheduledTask])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        """Pause the task: it keeps its schedule, its runs are skipped until it resumes."""
        task = self.get_object()
        body = PauseRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        until = body.validated_data.get("until")
        try:
            task.pause(body.validated_data["reason"], until=until, user=request.user, source="api")
        except DjangoValidationError as err:
            detail = as_drf_error(err).detail
            # The body's names, not the model's; an error of no field is the body's as a whole.
            renamed = {"pause_reason": "reason", "paused_until": "until"}
            by_field = detail if isinstance(detail, dict) else {"non_field_errors": detail}
            raise exceptions.ValidationError(
                {renamed.get(key, key): value for key, value in by_field.items()}
            ) from None
        return Response(self.get_serializer(task).data)

    @action(detail=True, methods=["post"], permission_classes=[CanChangeScheduledTask])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        """End the task's pause."""
        task = self.get_object()
        if task.paused:
            task.resume(user=request.user, source="api")
        return Response(self.get_serializer(task).data)

    @action(detail=True, methods=["get"])
    def history(self, request: Request, pk: str | None = None) -> Response:
        """The task's change history, newest first."""
        task = self.get_object()
        changes = history.entries_for(task)
        page = self.paginate_queryset(changes)
        shown = changes if page is None else page
        entries = HistoryEntrySerializer([history.describe(e) for e in shown], many=True).data
        return Response(entries) if page is None else self.get_paginated_response(entries)


def _parse_moment(name: str, value: str) -> dt.datetime:
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            raise exceptions.ValidationError(
                {
                    name: f"Enter an ISO 8601 date or date-time, such as 2026-01-31T06:00Z; "
                    f"got {value!r}."
                }
            )
        moment = dt.datetime.combine(day, dt.time())
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


RUN_FILTERS = [
    OpenApiParameter("scheduled_task", OpenApiTypes.INT, description="Runs of this task only."),
    OpenApiParameter(
        "status",
        OpenApiTypes.STR,
        enum=TaskRun.Status.values,
        description="Runs with this status only (repeat the parameter for several).",
        many=True,
        explode=True,
    ),
    OpenApiParameter(
        "started_after",
        OpenApiTypes.DATETIME,
        description="Runs started at or after this date or date-time.",
    ),
    OpenApiParameter(
        "started_before",
        OpenApiTypes.DATETIME,
        description="Runs started before this date or date-time.",
    ),
]


class TaskRunViewSet(OrchestratorViewSet, viewsets.ReadOnlyModelViewSet):
    """The run history, newest first (read-only: the workers write it)."""

    serializer_class = TaskRunSerializer
    permission_classes = [RunPermissions]
    pagination_class = RunPagination
    schema_overrides = {
        "list": {"parameters": RUN_FILTERS},
        "cancel": {
            "request": None,
            "responses": {
                202: TaskRunSerializer,
                409: OpenApiResponse(description="The run has already finished."),
            },
        },
    }
    queryset = TaskRun.objects.order_by("-started_at", "-id")

    @action(detail=True, methods=["post"], permission_classes=[CanRunScheduledTask])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel the run: 202 once it is cancelled, 409 when it has already finished."""
        run = self.get_object()
        if not run.cancel(user=request.user):
            raise Conflict(f"Run {run.pk} has already finished ({run.get_status_display()}).")
        return Response(TaskRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    def get_serializer_class(self) -> type[TaskRunSerializer]:
        if self.action == "retrieve":
            return TaskRunDetailSerializer
        return TaskRunSerializer

    def get_queryset(self) -> QuerySet[TaskRun]:
        runs = super().get_queryset()
        if self.action != "list":
            return runs
        # The log is for the run's own endpoint: a page of runs does not read it.
        runs = runs.defer("log")
        params = self.request.query_params
        if params.get("scheduled_task"):
            try:
                runs = runs.filter(scheduled_task=parse_id(params["scheduled_task"]))
            except ValueError:
                # A number too large for the database is refused here too: SQLite's driver
                # raises OverflowError for it (a 500), other databases match nothing.
                raise exceptions.ValidationError(
                    {
                        "scheduled_task": "Enter the id of a scheduled task (a whole number from "
                        f"1 to {MAX_DATABASE_INTEGER})."
                    }
                ) from None
        statuses = [s for s in params.getlist("status") if s]
        if statuses:
            unknown = sorted(set(statuses) - set(TaskRun.Status.values))
            if unknown:
                raise exceptions.ValidationError(
                    {
                        "status": f"Unknown status {', '.join(unknown)}; use one of "
                        f"{', '.join(TaskRun.Status.values)}."
                    }
                )
            runs = runs.filter(status__in=statuses)
        if params.get("started_after"):
            runs = runs.filter(
                started_at__gte=_parse_moment("started_after", params["started_after"])
            )
        if params.get("started_before"):
            runs = runs.filter(
                started_at__lt=_parse_moment("started_before", params["started_before"])
            )
        return runs


class NotificationChannelViewSet(OrchestratorViewSet, viewsets.ModelViewSet):
    """Where alerts go; targets are write-only in clear and read back masked."""

    queryset = NotificationChannel.objects.order_by("name")
    serializer_class = NotificationChannelSerializer
