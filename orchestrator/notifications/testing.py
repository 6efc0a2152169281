"""A channel kind for a project's own tests: alerts land in an in-memory outbox, nothing is sent.

Like Django's ``locmem`` email backend and anymail's test backend, it lets a project check its
alert wiring (which events reach which channel, cooldowns, thresholds, recoveries) without a
Slack workspace or an SMTP server. Enable the kind in the test settings::

    ORCHESTRATOR = {
        ...,
        "CHANNEL_KINDS": {"test": "orchestrator.notifications.testing.TestChannel"},
    }

then create a ``NotificationChannel(kind="test", target="ops")`` and assert on
:data:`outbox`::

    from orchestrator.notifications import testing

    testing.outbox.clear()
    ...  # make a task fail
    assert [m.message.event for m in testing.outbox] == ["failure"]

The outbox lives in the process that sends, like ``mail.outbox``: deliveries are Celery tasks,
so run them in the test's process (``CELERY_TASK_ALWAYS_EAGER = True``, or a worker started by
the test with the same settings and read its own outbox). A target of ``fail:permanent`` or
``fail:transient`` makes every send fail that way, to test how failed deliveries are handled.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, ClassVar

from django.core.exceptions import ValidationError

from orchestrator.notifications import messages
from orchestrator.notifications.base import Channel, NotificationError
from orchestrator.notifications.events import Message, Report

FAIL_PERMANENT = "fail:permanent"
FAIL_TRANSIENT = "fail:transient"


@dataclass(frozen=True)
class SentMessage:
    """One message a test channel was asked to send."""

    target: str
    message: Message
    payload: dict[str, Any]

    @property
    def text(self) -> str:
        return str(self.payload["text"])


# Every message sent through a TestChannel in this process, oldest first.
outbox: list[SentMessage] = []
_lock = threading.Lock()


class TestChannel(Channel):
    """Records each message in :data:`outbox` instead of sending it."""

    __test__ = False  # a pytest collecting this module must not take it for a test case
    kind: ClassVar[str] = "test"
    label: ClassVar[str] = "Test (in-memory outbox)"

    @classmethod
    def validate_target(cls, target: str) -> None:
        if not (target or "").strip():
            raise ValidationError({"target": "Enter a label for this test channel, such as ops."})

    def payload(self, message: Message) -> dict[str, Any]:
        if isinstance(message, Report):
            lines = [messages.report_headline(message), *messages.report_text_lines(message)]
            return {"text": "\n".join(lines), "message": message.to_dict()}
        return {"text": messages.fallback_text(message), "message": message.to_dict()}

    def notify(self, message: Message) -> None:
        if self.target == FAIL_PERMANENT:
            raise NotificationError("Test channel refused the message", permanent=True)
        if self.target == FAIL_TRANSIENT:
            raise NotificationError("Test channel is unavailable")
        with _lock:
            outbox.append(SentMessage(self.target, message, self.payload(message)))
