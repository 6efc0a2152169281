"""Admin for notification channels (secrets masked, a test action) and the delivery log."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from orchestrator.changelist import BoundedChangeListMixin
from orchestrator.models import Event, NotificationChannel, NotificationDelivery
from orchestrator.notifications.delivery import queue_test_notification
from orchestrator.notifications.events import truncate
from orchestrator.notifications.redact import redact
from orchestrator.notifications.registry import mask_target


def redacted_error(text: str, channel: NotificationChannel) -> str:
    """A stored error as it may be shown: stored errors are redacted when written, and this
    guards against one that was not (an older release, a channel class quoting its own URL)."""
    return redact(text or "", [channel.target])


def masked_target(channel: NotificationChannel) -> str:
    return mask_target(channel.kind, channel.target)


class NotificationChannelForm(forms.ModelForm):
    """Shows a webhook URL masked; leaving the masked value untouched keeps the stored one."""

    events = forms.MultipleChoiceField(
        choices=Event.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Events sent to this channel.",
    )

    class Meta:
        model = NotificationChannel
        fields = [
            "name",
            "kind",
            "target",
            "events",
            "enabled",
            "is_default",
            "cooldown",
            "alert_after_failures",
        ]
        widgets = {"target": forms.TextInput(attrs={"size": 80, "autocomplete": "off"})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._masked = ""
        # A user who may only view gets no editable target field (the admin shows
        # target_display instead, see NotificationChannelAdmin.get_fieldsets).
        if self.instance.pk and self.instance.target and "target" in self.fields:
            masked = masked_target(self.instance)
            if masked != self.instance.target:
                self._masked = masked
                self.initial["target"] = masked
                self.fields["target"].help_text = (
                    "Stored and hidden. Leave as is to keep it, or paste a new URL to replace it. "
                    + str(self.fields["target"].help_text)
                )

    def clean_target(self) -> str:
        value = (self.cleaned_data.get("target") or "").strip()
        if self._masked and value == self._masked:
            return self.instance.target
        return value


@admin.register(NotificationChannel)
class NotificationChannelAdmin(BoundedChangeListMixin, admin.ModelAdmin):
    form = NotificationChannelForm
    list_display = [
        "name",
        "kind",
        "target_display",
        "events_display",
        "enabled",
        "is_default",
        "cooldown",
        "alert_after_failures",
        "last_error_display",
    ]
    list_filter = ["kind", "enabled", "is_default"]
    search_fields = ["name"]
    readonly_fields = ["last_error_text", "last_error_at", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "target", "enabled", "is_default"]}),
        ("What is sent", {"fields": ["events", "cooldown", "alert_after_failures"]}),
        ("Health", {"fields": ["last_error_text", "last_error_at", "created_at", "updated_at"]}),
    ]
    actions = ["send_test_notification"]

    @admin.display(description="target")
    def target_display(self, obj: NotificationChannel) -> str:
        return masked_target(obj)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        # Read-only pages show every field's raw value: show the target masked instead.
        return [
            (name, {**options, "fields": [_masked_field(f) for f in options["fields"]]})
            for name, options in fieldsets
        ]

    @admin.display(description="events")
    def events_display(self, obj: NotificationChannel) -> str:
        return ", ".join(obj.events or []) or "-"

    @admin.display(description="last error", ordering="last_error_at")
    def last_error_display(self, obj: NotificationChannel) -> str:
        if not obj.last_error:
            return "-"
        error = redacted_error(obj.last_error, obj)
        when = obj.last_error_at.strftime("%Y-%m-%d %H:%M") if obj.last_error_at else ""
        return format_html('<span title="{}">{}: {}</span>', error, when, truncate(error, 60))

    @admin.display(description="last error")
    def last_error_text(self, obj: NotificationChannel) -> str:
        return redacted_error(obj.last_error, obj) or "-"

    # Sending is an outside effect and writes the channel's last error: editors only, not viewers.
    @admin.action(description="Send test notification", permissions=["change"])
    def send_test_notification(
        self, request: HttpRequest, queryset: QuerySet[NotificationChannel]
    ) -> None:
        log = reverse("admin:orchestrator_notificationdelivery_changelist")
        for channel in queryset:
            # Queued like any alert: the request never waits for Slack or SMTP.
            queue_test_notification(channel)
            self.message_user(
                request,
                format_html(
                    '{}: test notification queued; its result will be in the <a href="{}">'
                    "delivery log</a>.",
                    channel.name,
                    f"{log}?channel__id__exact={channel.pk}&event__exact=test",
                ),
                messages.SUCCESS,
            )


def _masked_field(name: Any) -> Any:
    return "target_display" if name == "target" else name


DELIVERY_FIELDS = (
    "created_at",
    "channel",
    "event",
    "scheduled_task",
    "task_run",
    "status",
    "attempts",
    "suppressed_count",
    "error_text",
    "requeued_at",
    "retry_at",
    "sent_at",
    "finished_at",
)


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(BoundedChangeListMixin, admin.ModelAdmin):
    """The delivery log: read-only, one row per alert per channel."""

    list_display = [
        "created_at",
        "event",
        "channel",
        "scheduled_task",
        "status",
        "attempts",
        "suppressed_count",
        "error_display",
        "sent_at",
    ]
    list_filter = ["status", "event", "channel", "created_at"]
    list_select_related = ["channel", "scheduled_task"]
    search_fields = ["scheduled_task__name", "channel__name", "error", "suppressed_reason"]
    date_hierarchy = "created_at"
    fields = DELIVERY_FIELDS
    readonly_fields = DELIVERY_FIELDS

    @admin.display(description="error or reason")
    def error_display(self, obj: NotificationDelivery) -> str:
        return truncate(redacted_error(obj.reason, obj.channel), 80) or "-"

    @admin.display(description="error or reason")
    def error_text(self, obj: NotificationDelivery) -> str:
        return redacted_error(obj.reason, obj.channel) or "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
