"""Field validators shared by the models, and so by the admin, the API and the commands."""

from __future__ import annotations

import re
import zoneinfo
from typing import Any

from django.core.exceptions import ValidationError

from orchestrator import callables, cron
from orchestrator.conf import conf

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")


def validate_import_path_shape(value: str) -> None:
    """A dotted path inside the allow-list (nothing is imported here)."""
    try:
        callables.check_allowed(value, conf.ALLOWED_TASK_MODULES)
    except callables.CallableError as err:
        raise ValidationError(str(err), code="import_path") from None


def validate_cron(value: str) -> None:
    try:
        cron.validate(value)
    except cron.CronError as err:
        raise ValidationError(str(err), code="cron") from None


def validate_timezone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValidationError(
            f"{value!r} is not a known time zone. Use an IANA name such as 'UTC' or "
            "'Europe/Paris'.",
            code="timezone",
        ) from None


def validate_kwargs_object(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError(
            'Enter a JSON object of keyword arguments, such as {"days": 7}; '
            f"got a JSON {type(value).__name__}.",
            code="kwargs",
        )


def validate_queue_name(value: str) -> None:
    if value and not _QUEUE_NAME.match(value):
        raise ValidationError(
            "A queue name may contain only letters, digits, '.', '_', ':' and '-'.",
            code="queue",
        )
