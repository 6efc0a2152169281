"""Form fields and forms shared by the admin and the dashboard."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput

from orchestrator.sanitize import UnreadableJSON
from orchestrator.validators import MAX_JSON_DEPTH, nested_deeper_than, too_deep_message

# Shown in the kwargs box in place of a value written around validation that is nested too
# deeply to show: it is not JSON, so saving the form without replacing it is refused on the
# field rather than wiping the stored value.
TOO_DEEP_TO_SHOW = (
    f"(These keyword arguments are nested too deeply to show, more than {MAX_JSON_DEPTH} "
    "levels; enter them again as a flatter JSON object.)"
)


def _too_deep_to_show(value: Any) -> bool:
    return isinstance(value, UnreadableJSON) or nested_deeper_than(value, MAX_JSON_DEPTH)


class KwargsFormField(forms.JSONField):
    """Django's JSONField, made safe for the kwargs column.

    * JSON nested past Python's recursion limit is a form error: ``json.loads`` raises
      RecursionError (not JSONDecodeError), which Django's field lets through as a server error,
      both when cleaning and when showing the form again.
    * JSON that parses but is nested deeper than ``MAX_JSON_DEPTH`` is refused the same way,
      before a validator or an error message walks it.
    * A stored value nested too deeply to encode (written straight into the database) is shown
      as a note that is not JSON, so the page renders and saving it unchanged is refused.
    * An emptied box means no arguments (``{}``), and ``null`` is refused: Django's field turns
      both into None, which the model's validators skip and the NOT NULL column refuses (a 500).
    """

    def to_python(self, value: Any) -> Any:
        try:
            converted = super().to_python(value)
        except RecursionError:
            converted = None
            too_deep = True
        else:
            too_deep = nested_deeper_than(converted, MAX_JSON_DEPTH)
        if too_deep:
            raise ValidationError(too_deep_message(), code="invalid")
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
            value = super().bound_data(data, initial)
        except RecursionError:
            return InvalidJSONInput(data)
        if nested_deeper_than(value, MAX_JSON_DEPTH):
            return InvalidJSONInput(data)  # shown again as typed
        return value

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, InvalidJSONInput):
            return value
        if _too_deep_to_show(value):
            return TOO_DEEP_TO_SHOW
        return super().prepare_value(value)

    def has_changed(self, initial: Any, data: Any) -> bool:
        if _too_deep_to_show(initial):
            return True  # nothing typed can equal a value that cannot be shown
        try:
            return super().has_changed(initial, data)
        except (RecursionError, ValidationError):
            return True


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
        if _too_deep_to_show(value):
            return "(nested too deeply to show; enter the class names again)"
        if isinstance(value, list):
            return ", ".join(str(name) for name in value)
        return value

    def to_python(self, value: Any) -> Any:
        text = (super().to_python(value) or "").strip()
        if text.startswith("["):
            try:
                names = json.loads(text)
            except (ValueError, RecursionError):
                names = None
            # A list of names is one level deep; anything far deeper would only make the
            # model's validator walk (and repr) it.
            if names is None or nested_deeper_than(names, MAX_JSON_DEPTH):
                raise ValidationError(
                    "Enter class names separated by commas, or a JSON list of them.",
                    code="invalid",
                ) from None
            return names
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
