"""How orchestrator's routing fields become Celery message options for the configured broker."""

from __future__ import annotations

from orchestrator.conf import conf
from orchestrator.policies.priority import to_broker_priority, transport_of


def broker_transport() -> str:
    """The broker transport in use: ORCHESTRATOR["BROKER_TRANSPORT"] or Celery's broker_url."""
    if conf.BROKER_TRANSPORT:
        return conf.BROKER_TRANSPORT
    from celery import current_app

    return transport_of(current_app.conf.broker_url)


def native_priority(priority: int | None) -> int | None:
    """``priority`` (0-9, 9 = most urgent) in the broker's own direction."""
    return to_broker_priority(priority, broker_transport())
