"""Serializers with the models' field names, validated by the models' own ``full_clean()``.

The admin validates through ``full_clean()`` (field validators, then ``clean()``); so does the API,
so both refuse the same input with the same messages. Django's ``ValidationError`` is turned into
DRF's, keyed by field (``non_field_errors`` for model-wide errors).
"""

from __future__ import annotations

import copy
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.settings import api_settings

from orchestrator.models import NotificationChannel, ScheduledTask, TaskDefinition, TaskRun
from orchestrator.notifications.redact import redact
from orchestrator.notifications.registry import mask_target
from orchestrator.sanitize import UnreadableJSON
from orchestrator.validators import MAX_JSON_DEPTH, nested_deeper_than, too_deep_message


def as_drf_error(err: DjangoValidationError) -> serializers.ValidationError:
    """A Django ValidationError as a DRF one with the same field keys and messages."""
    if not hasattr(err, "error_dict"):
        return serializers.ValidationError({api_settings.NON_FIELD_ERRORS_KEY: err.messages})
    detail = {
        (api_settings.NON_FIELD_ERRORS_KEY if field == "__all__" else field): messages
        for field, messages in err.message_dict.items()
    }
    return serializers.ValidationError(detail)


# Deeper than this, a stored value is not shown: Python's JSON encoder recurses, and a response
# is rendered with a few hundred frames on the stack already.
MAX_SHOWN_JSON_DEPTH = 200
NOT_SHOWN = "(nested too deeply to show)"


class JSONField(serializers.JSONField):
    """DRF's JSONField, with JSON nested deeper than ``MAX_JSON_DEPTH`` refused on the field.

    A JSON request body nested past Python's recursion limit is refused by the parser; the same
    value sent as form data or multipart reaches this field as text, where ``json.loads`` raises
    RecursionError (DRF catches only ValueError: a 500). Anything that decodes but is nested
    deeper than any of our JSON fields needs is refused too, before a validator or an error
    message walks it.
    """

    default_error_messages = {"too_deep": too_deep_message()}

    def to_representation(self, value: Any) -> Any:
        # A stored value that cannot be decoded, or encoded again (written around validation):
        # said in words, so that the response renders.
        if isinstance(value, UnreadableJSON) or nested_deeper_than(value, MAX_SHOWN_JSON_DEPTH):
            return NOT_SHOWN
        return super().to_representation(value)

    def to_internal_value(self, data: Any) -> Any:
        try:
            value = super().to_internal_value(data)
        except RecursionError:
            self.fail("too_deep")
        if nested_deeper_than(value, MAX_JSON_DEPTH):
            self.fail("too_deep")
        return value


class FullCleanModelSerializer(serializers.ModelSerializer):
    """A ModelSerializer whose ``validate()`` runs the model's ``full_clean()``.

    The instance being validated is a copy, so a refused update leaves the original untouched.
    Many-to-many values are left out: ``full_clean()`` does not look at them. JSON columns use
    the depth-checked :class:`JSONField`.
    """

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.JSONField: JSONField,
    }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        model: type[models.Model] = self.Meta.model
        instance = copy.copy(self.instance) if self.instance is not None else model()
        many_to_many = {field.name for field in model._meta.many_to_many}
        for name, value in attrs.items():
            if name not in many_to_many:
                setattr(instance, name, value)
        try:
            # Uniqueness is checked by DRF's own validators first, with the same messages.
            instance.full_clean(validate_unique=False)
        except DjangoValidationError as err:
            raise as_drf_error(err) from None
        return attrs


class TaskDefinitionSerializer(FullCleanModelSerializer):
    class Meta:
        model = TaskDefinition
        fields = [
            "id",
            "name",
            "import_path",
            "description",
            "category",
            "enabled",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]


class ScheduledTaskSerializer(FullCleanModelSerializer):
    schedule_description = serializers.SerializerMethodField(
        help_text="The cron expression in words."
    )
    next_run_at = serializers.SerializerMethodField(
        help_text="When the schedule fires next; null while the task or its definition is disabled."
    )

    class Meta:
        model = ScheduledTask
        fields = [
            "id",
            "name",
            "task_definition",
            "cron",
            "timezone",
            "kwargs",
            "enabled",
            "description",
            "max_retries",
            "retry_backoff",
            "retry_delay",
            "retry_backoff_max",
            "retry_jitter",
            "priority",
            "queue",
            "expires",
            "time_limit",
            "retry_on",
            "never_retry_on",
            "overlap",
            "pause_after_failures",
            "paused",
            "pause_reason",
            "paused_until",
            "catch_up",
            "catch_up_limit",
            "missed_grace",
            "notification_channels",
            "periodic_task",
            "schedule_description",
            "next_run_at",
            "version",
            "created_at",
            "updated_at",
        ]
        # Pausing has its own endpoints (pause/, resume/), with their own permission.
        read_only_fields = [
            "periodic_task",
            "paused",
            "pause_reason",
            "paused_until",
            "version",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(OpenApiTypes.STR)
    def get_schedule_description(self, task: ScheduledTask) -> str:
        return task.describe_schedule()

    @extend_schema_field(OpenApiTypes.DATETIME)
    def get_next_run_at(self, task: ScheduledTask) -> str | None:
        when = task.next_run_at()
        return serializers.DateTimeField().to_representation(when) if when else None


class TaskRunSerializer(serializers.ModelSerializer):
    serializer_field_mapping = FullCleanModelSerializer.serializer_field_mapping

    class Meta:
        model = TaskRun
        fields = [
            "id",
            "scheduled_task",
            "attempt",
            "max_attempts",
            "status",
            "trigger",
            "started_at",
            "finished_at",
            "duration",
            "result",
            "error_type",
            "error_message",
            "traceback",
            "celery_task_id",
            "worker",
            "queue",
            "priority",
            "next_retry_at",
            "scheduled_for",
            "kwargs_override",
            "triggered_by",
            "cancelled_by",
            "task_version",
            "note",
        ]
        read_only_fields = fields


class TaskRunDetailSerializer(TaskRunSerializer):
    """One run with its log (what the function logged and printed): only the run's own
    endpoint returns it, so a page of runs stays small."""

    class Meta(TaskRunSerializer.Meta):
        fields = [*TaskRunSerializer.Meta.fields, "log"]
        read_only_fields = fields


class NotificationChannelSerializer(FullCleanModelSerializer):
    """A channel whose ``target`` is write-only in clear and read back masked.

    Webhook URLs carry their credential, so responses show ``https://hooks.slack.com/…abcd``;
    a PATCH that leaves ``target`` out keeps the stored one.
    """

    class Meta:
        model = NotificationChannel
        fields = [
            "id",
            "name",
            "kind",
            "target",
            "events",
            "enabled",
            "is_default",
            "cooldown",
            "alert_after_failures",
            "last_error",
            "last_error_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["last_error", "last_error_at", "created_at", "updated_at"]
        extra_kwargs = {
            "target": {
                "help_text": "Slack webhook URL or channel, or email addresses. Shown masked "
                "in responses: webhook URLs are secrets."
            }
        }

    def to_representation(self, instance: NotificationChannel) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["target"] = mask_target(instance.kind, instance.target)
        # Delivery errors are stored redacted; redacting again costs nothing and guards against a
        # channel class that let its own URL into a message.
        data["last_error"] = redact(instance.last_error, [instance.target])
        return data


class RunAcceptedSerializer(serializers.Serializer):
    """The answer to ``POST scheduled-tasks/<id>/run/``."""

    celery_task_id = serializers.CharField(help_text="Id of the Celery task sent to the workers.")


class RunRequestSerializer(serializers.Serializer):
    """The optional body of ``POST scheduled-tasks/<id>/run/``."""

    kwargs = JSONField(
        required=False,
        help_text="Keyword arguments for this run only, in place of the task's, checked "
        "against the function's signature.",
    )


class PauseRequestSerializer(serializers.Serializer):
    """The body of ``POST scheduled-tasks/<id>/pause/``."""

    reason = serializers.CharField(max_length=500, help_text="Why the task is paused.")
    until = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="When the pause ends by itself (ISO 8601); leave out to pause until resumed.",
    )


class HistoryEntrySerializer(serializers.Serializer):
    """One change of a scheduled task, as ``GET scheduled-tasks/<id>/history/`` lists them."""

    changed_at = serializers.DateTimeField()
    changed_by = serializers.CharField(help_text='A username, "system", or empty.')
    # A declared field named like Field.source: DRF's metaclass takes it out of the class
    # attributes, so it shadows nothing at run time; the stubs see a class attribute.
    source = serializers.CharField(  # type: ignore[assignment]
        help_text="admin, api, dashboard, system or shell."
    )
    action = serializers.CharField(help_text="create, update or delete.")
    changes = serializers.DictField(
        help_text='Each changed field with its old and new value: {"field": [old, new]}.'
    )
