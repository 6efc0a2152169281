"""The contract every notification channel implements."""

from __future__ import annotations

from typing import Any, ClassVar

from orchestrator.notifications.events import Alert, Message, Report
from orchestrator.notifications.redact import is_url, mask_url


class NotificationError(Exception):
    """A send failed.

    ``permanent`` errors (bad credentials, unknown channel, a deleted webhook) will fail again
    the same way: they are not retried and they mark the channel with its last error. Other
    errors (timeouts, 5xx, rate limits) are retried; ``retry_after`` carries the server's
    ``Retry-After`` in seconds when it sent one. The message must never contain a secret: it
    is stored, shown in the admin and logged.
    """

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class Channel:
    """Base class of a channel kind (Slack, email, ...).

    Subclasses set ``kind`` and ``label`` and implement :meth:`payload` and :meth:`notify`; they
    are listed in :data:`orchestrator.notifications.registry.CHANNELS`. An instance wraps one
    ``target`` (a webhook URL, a Slack channel, addresses...).

    * :meth:`validate_target` checks a target when a channel is saved;
    * :meth:`mask_target` is how the target is shown where secrets must not appear (pages, the
      API, logs); by default a URL is assumed to carry a credential and is masked;
    * :meth:`secrets` lists the strings a send's errors must never contain: the delivery service
      redacts them before an error is stored, shown or logged. A kind with a credential (a
      token from settings, a key in the target) lists it here, and gets redaction everywhere;
    * :meth:`payload` builds what would be sent, without I/O, so it can be tested exactly;
    * :meth:`notify` sends, returns nothing on success, and raises :class:`NotificationError`
      on any failure (never another exception type).
    """

    kind: ClassVar[str] = ""
    label: ClassVar[str] = ""

    def __init__(self, target: str) -> None:
        self.target = (target or "").strip()

    @classmethod
    def validate_target(cls, target: str) -> None:
        """Raise ``django.core.exceptions.ValidationError`` when ``target`` cannot work."""

    @classmethod
    def mask_target(cls, target: str) -> str:
        """``target`` as it may be shown in the admin, the API, errors and logs."""
        return mask_url(target) if is_url(target) else target

    def secrets(self) -> list[str]:
        """The secret strings this channel sends with: never stored, shown or logged."""
        return [self.target] if is_url(self.target) else []

    @property
    def masked_target(self) -> str:
        return self.mask_target(self.target)

    def payload(self, message: Message) -> Any:
        """What :meth:`notify` would send for ``message`` (an Alert or a Report)."""
        raise NotImplementedError

    def notify(self, message: Message) -> None:
        """Send ``message``; raise :class:`NotificationError` when that fails."""
        raise NotImplementedError


__all__ = ["Alert", "Channel", "Message", "NotificationError", "Report"]
