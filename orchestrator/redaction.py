"""Keep secrets out of what a run stores and sends: its error, traceback, result and output.

A task that fails with an exception quoting a webhook URL, a Slack token or a password would
otherwise have it written to ``TaskRun`` and quoted in every alert. :func:`redact_run_text` is
the one function every writer of run text calls (the dispatcher for the error, traceback and
result, the log capture for the output, the alert builder for what it quotes). It masks:

* the secrets orchestrator knows: ``SLACK_BOT_TOKEN`` and what each enabled notification
  channel lists in :meth:`~orchestrator.notifications.base.Channel.secrets` (webhook URLs);
* the values of the run's kwargs whose names look secret (``token``, ``password``, ``api_key``,
  see :func:`orchestrator.sanitize.looks_secret`), at any depth;
* anything shaped like a secret: Slack webhook URLs and ``xox?-`` tokens, bearer headers, and
  credentials in URLs (``scheme://user:password@host``), see
  :func:`orchestrator.notifications.redact.redact`.

The channels' secrets are read once and kept for :data:`KNOWN_SECRETS_SECONDS` (a saved or
deleted channel forgets them in this process at once), and only when there is text to redact:
a successful attempt whose result holds no string costs no query.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError
from django.db.models.signals import post_delete, post_save

from orchestrator.conf import conf
from orchestrator.models import NotificationChannel
from orchestrator.notifications.redact import redact
from orchestrator.notifications.registry import UnknownChannelKind, get_channel
from orchestrator.sanitize import looks_secret, mask_secret_values

logger = logging.getLogger(__name__)

# How long a process trusts the channel secrets it read: a channel edited in another process
# (the admin's) is known to the workers after at most this long.
KNOWN_SECRETS_SECONDS = 60.0
_MAX_DEPTH = 64

_lock = threading.Lock()
_known: tuple[float, tuple[str, ...]] | None = None


def channel_secrets() -> tuple[str, ...]:
    """The secrets of the enabled notification channels, read now (one query)."""
    secrets: list[str] = []
    for kind, target in NotificationChannel.objects.filter(enabled=True).values_list(
        "kind", "target"
    ):
        try:
            secrets.extend(get_channel(kind, target).secrets())
        except (UnknownChannelKind, ImportError):
            continue  # a kind nobody can load sends nothing, and is reported by a check
    return tuple(s for s in secrets if s)


def known_secrets(*, clock: Callable[[], float] = time.monotonic) -> tuple[str, ...]:
    """``SLACK_BOT_TOKEN`` and the enabled channels' secrets, read at most once per
    :data:`KNOWN_SECRETS_SECONDS` in this process."""
    global _known
    now = clock()
    with _lock:
        cached = _known
    if cached is None or now >= cached[0]:
        try:
            cached = (now + KNOWN_SECRETS_SECONDS, channel_secrets())
        except DatabaseError as err:
            # The run's outcome still has to be written (by code that reconnects, and that
            # fails just the same if the database is gone): mask with what was read before,
            # and read again next time.
            logger.warning("Could not read the notification channels' secrets: %s", err)
            return (conf.SLACK_BOT_TOKEN, *(cached[1] if cached else ()))
        with _lock:
            _known = cached
    return (conf.SLACK_BOT_TOKEN, *cached[1])


def forget_known_secrets(**_: Any) -> None:
    """Drop the cached channel secrets (a channel was saved or deleted in this process)."""
    global _known
    with _lock:
        _known = None


post_save.connect(forget_known_secrets, sender=NotificationChannel, weak=False)
post_delete.connect(forget_known_secrets, sender=NotificationChannel, weak=False)


def secret_kwarg_values(kwargs: Any) -> list[str]:
    """The values (as text) of the keys in ``kwargs`` whose names look secret, at any depth."""
    found: list[str] = []

    def walk(value: Any, depth: int, secret: bool) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, depth + 1, secret or (isinstance(key, str) and looks_secret(key)))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, depth + 1, secret)
        elif secret and value is not None and not isinstance(value, bool):
            found.append(str(value))

    walk(kwargs, 0, False)
    return found


def redact_run_text(text: str, kwargs: Any = None) -> str:
    """``text`` (a run's error, traceback or captured output) with every secret masked.

    ``kwargs`` are the arguments the run was called with: the values of those whose names
    look secret are masked too. Never raises for odd kwargs; costs no query when ``text`` is
    empty, and at most one per :data:`KNOWN_SECRETS_SECONDS` otherwise.
    """
    if not text:
        return text
    return redact(text, [*known_secrets(), *secret_kwarg_values(kwargs)])


def redact_run_result(value: Any, kwargs: Any = None) -> Any:
    """A run's result (JSON: dicts, lists, strings, numbers) with every secret masked.

    Values under keys that look secret are masked whole, and each string is passed through
    :func:`redact_run_text`. A result without strings is returned as it is, without a query.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    masked = mask_secret_values(value)
    secrets: list[str] | None = None

    def clean(item: Any, depth: int) -> Any:
        nonlocal secrets
        if isinstance(item, str):
            if not item:
                return item
            if secrets is None:
                secrets = [*known_secrets(), *secret_kwarg_values(kwargs)]
            return redact(item, secrets)
        if depth > _MAX_DEPTH:
            return item
        if isinstance(item, dict):
            return {clean(k, depth + 1): clean(v, depth + 1) for k, v in item.items()}
        if isinstance(item, list):
            return [clean(v, depth + 1) for v in item]
        return item

    return clean(masked, 0)
