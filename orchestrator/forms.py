"""Form fields and forms shared by the admin and the dashboard."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput


class KwargsFormField(forms.JSONField):
    """Django's JSONField, made safe for the kwargs column.

    * JSON nested past Python's recursion limit is a form error: ``json.loads`` raises
      RecursionError (not JSONDecodeError), which Django's field lets through as a server error,
      both when cleaning and when showing the form again.
    * An emptied box means no arguments (``{}``), and ``null`` is refused: Django's field turns
      both into None, which the model's validators skip and the NOT NULL column refuses (a 500).
    """

    def to_python(self, value: Any) -> Any:
        try:
            converted = super().to_python(value)
        except RecursionError:
            raise ValidationError(
                "This JSON is nested too deeply; flatten the keyword arguments.",
                code="invalid",
            ) from None
        if converted is None:
            if value in self.empty_values:
                return {}
            raise ValidationError(
                'Enter a JSON object of keyword arguments, such as {"days": 7}; got null.',
                code="invalid",
            )
        return converted

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return InvalidJSONInput(data)


class ExceptionNamesField(forms.CharField):
    """Exception class names typed as a comma-separated list (or a JSON list), stored as a list.

    ``ConnectionError, requests.exceptions.Timeout`` is easier to type than JSON; the model's
    validator checks each name.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("widget", forms.TextInput(attrs={"size": 60, "spellcheck": "false"}))
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return ", ".join(str(name) for name in value)
        return value

    def to_python(self, value: Any) -> Any:
        text = (super().to_python(value) or "").strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except (ValueError, RecursionError):
                raise ValidationError(
                    "Enter class names separated by commas, or a JSON list of them.",
                    code="invalid",
                ) from None
        parts = text.replace("\n", ",").split(",")
        return [name for name in (part.strip() for part in parts) if name]


class PauseForm(forms.Form):
    """Pause a task (or, in the admin's bulk action, every selected task): a reason, and an
    optional end."""

    reason = forms.CharField(max_length=500, help_text="Shown with every skipped run.")
    until = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="When the pause ends by itself (in the site's time zone); leave empty to "
        "pause until someone resumes.",
    )


class RunWithArgumentsForm(forms.Form):
    """Run a task now with keyword arguments of its own (checked against the function's
    signature by :func:`orchestrator.operations.check_run_kwargs`)."""

    kwargs = KwargsFormField(
        label="Keyword arguments",
        required=False,  # {} (no arguments) is a valid choice, which "required" would refuse
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60, "spellcheck": "false"}),
        help_text="A JSON object, for this run only; the task's own arguments are unchanged.",
    )
