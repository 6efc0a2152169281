"""The Celery task that performs one notification delivery."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="orchestrator.deliver_notification", ignore_result=True)
def deliver_notification(delivery_id: int, message: dict[str, Any]) -> str:
    """Send the pending delivery ``delivery_id`` with the alert or report in ``message``."""
    from orchestrator.notifications.delivery import deliver

    return deliver(delivery_id, message)
