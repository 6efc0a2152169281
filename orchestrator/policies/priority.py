"""Translate orchestrator priorities (0-9, 9 = most urgent) to what each broker understands."""

from __future__ import annotations

MIN_PRIORITY = 0
MAX_PRIORITY = 9

# Redis (kombu's emulation): 0 is served first, values are grouped in bands.
LOW_FIRST_TRANSPORTS = frozenset({"redis", "rediss", "sentinel", "sentinels"})
# AMQP brokers (RabbitMQ): the higher value is served first, up to the queue's x-max-priority.
HIGH_FIRST_TRANSPORTS = frozenset({"amqp", "amqps", "pyamqp", "librabbitmq"})
# Transports that have no notion of message priority at all.
NO_PRIORITY_TRANSPORTS = frozenset({"filesystem", "memory", "sqs", "django", "sqlalchemy"})


def transport_of(broker_url: str | None) -> str:
    """The transport name of a broker URL: ``"redis://h:6379/0"`` -> ``"redis"``."""
    if not broker_url:
        return "amqp"  # Celery's own default broker
    first = broker_url.split(";")[0].strip()
    scheme = first.split("://", 1)[0] if "://" in first else first
    return scheme.split("+", 1)[0].lower()


def supports_priority(transport: str) -> bool:
    return transport in LOW_FIRST_TRANSPORTS or transport in HIGH_FIRST_TRANSPORTS


def to_broker_priority(priority: int | None, transport: str) -> int | None:
    """The native message priority for ``priority`` on ``transport``; None keeps the default."""
    if priority is None:
        return None
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}")
    if transport in LOW_FIRST_TRANSPORTS:
        return MAX_PRIORITY - priority
    return priority
