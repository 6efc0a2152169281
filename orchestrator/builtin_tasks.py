"""Tasks that ship with orchestrator; a TaskDefinition can name them like any other callable.

Add ``"orchestrator.builtin_tasks"`` to ``ORCHESTRATOR["ALLOWED_TASK_MODULES"]`` to use them.
"""

from __future__ import annotations

from typing import Any

from orchestrator.notifications.delivery import send_report
from orchestrator.notifications.report import build_report


def failure_report(
    since: str = "24h", to: list[str] | None = None, always: bool = False
) -> dict[str, Any]:
    """Email/Slack the failure report of the last ``since`` (such as "24h" or "7d").

    It goes to the channels subscribed to the "report" event and to the addresses in ``to``.
    Nothing is sent when nothing failed, unless ``always``. A destination that could not be
    reached makes the run fail, so the task's retry policy applies.
    """
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
    failed = [f"{o.destination}: {o.error}" for o in outcomes if o.status != "sent"]
    if failed:
        raise RuntimeError("Failure report not delivered to " + "; ".join(failed))
    return summary
