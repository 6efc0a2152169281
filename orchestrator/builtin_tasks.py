"""Tasks that ship with orchestrator; a TaskDefinition can name them like any other callable.

Add ``"orchestrator.builtin_tasks"`` to ``ORCHESTRATOR["ALLOWED_TASK_MODULES"]`` to use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from orchestrator.callables import checks_kwargs
from orchestrator.notifications.delivery import send_report
from orchestrator.notifications.report import build_report, parse_period


def check_failure_report_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Raise ValueError naming the argument unless ``kwargs`` suit :func:`failure_report`.

    ``to`` must be a list of email addresses: a string would be mailed one character at a time.
    """
    example = '["ops@example.com"]'
    to = kwargs.get("to")
    if to is not None:
        if not isinstance(to, list):
            raise ValueError(
                f"to must be a list of email addresses, such as {example}; "
                f"got a JSON {_json_type(to)}."
            )
        for address in to:
            if not isinstance(address, str):
                raise ValueError(
                    f"to must list email addresses as text, such as {example}; "
                    f"{address!r} is a JSON {_json_type(address)}."
                )
            try:
                validate_email(address)
            except ValidationError:
                raise ValueError(f"to: {address!r} is not an email address.") from None
    since = kwargs.get("since", "24h")
    if not isinstance(since, str):
        raise ValueError(f'since must be a period such as "24h" or "7d"; got {since!r}.')
    try:
        parse_period(since)
    except ValueError as err:
        raise ValueError(f"since: {err}") from None
    always = kwargs.get("always", False)
    if not isinstance(always, bool):
        raise ValueError(f"always must be true or false; got {always!r}.")


def _json_type(value: Any) -> str:
    names = {str: "string", dict: "object", int: "number", float: "number", bool: "boolean"}
    return names.get(type(value), type(value).__name__)


@checks_kwargs(check_failure_report_kwargs)
def failure_report(
    since: str = "24h", to: list[str] | None = None, always: bool = False
) -> dict[str, Any]:
    """Email/Slack the failure report of the last ``since`` (such as "24h" or "7d").

    It goes to the channels subscribed to the "report" event and to the addresses in ``to``.
    Nothing is sent when nothing failed, unless ``always``. A destination that could not be
    reached makes the run fail, so the task's retry policy applies. The arguments are checked
    by :func:`check_failure_report_kwargs` when the task is saved, before each run, and here
    again for a direct call.
    """
    check_failure_report_kwargs({"since": since, "to": to, "always": always})
    report = build_report(since)
    summary: dict[str, Any] = {
        "since": report.since.isoformat(),
        "failing_tasks": len(report.rows),
        "sent": [],
    }
    if not report.has_failures and not always:
        return summary
    outcomes = send_report(report, to=to or [])
    summary["sent"] = [o.destination for o in outcomes if o.status == "sent"]
    # A rate-limited channel sends it later by itself: failing the run would send it twice.
    deferred = [o.destination for o in outcomes if o.status == "pending"]
    if deferred:
        summary["deferred"] = deferred
    failed = [
        f"{o.destination}: {o.error}" for o in outcomes if o.status not in ("sent", "pending")
    ]
    if failed:
        raise RuntimeError("Failure report not delivered to " + "; ".join(failed))
    return summary
