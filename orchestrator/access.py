"""Who may see what: the permission rules that more than one edge applies.

The admin treats a model's change permission as implying its view permission; so does every
rule here. The API's permission classes and the dashboard's views both call these functions,
so a user sees the same things through each.
"""

from __future__ import annotations

from typing import Any

VIEW_SCHEDULED_TASKS = ("orchestrator.view_scheduledtask", "orchestrator.change_scheduledtask")
VIEW_RUNS = ("orchestrator.view_taskrun", "orchestrator.change_taskrun")


def can_view_scheduled_tasks(user: Any) -> bool:
    """Whether ``user`` may see scheduled tasks (the dashboard, ``GET /api/scheduled-tasks/``)."""
    return _has_any(user, VIEW_SCHEDULED_TASKS)


def can_view_runs(user: Any) -> bool:
    """Whether ``user`` may see the run history: statuses, errors, notes, results.

    Run errors quote what a task raised, which may be more than a user allowed to list tasks
    should read: ``GET /api/runs/`` and the dashboard's run history and recent failures both
    ask this.
    """
    return _has_any(user, VIEW_RUNS)


def _has_any(user: Any, perms: tuple[str, ...]) -> bool:
    return bool(
        user is not None and user.is_authenticated and any(user.has_perm(perm) for perm in perms)
    )
