"""Keep webhook URLs and tokens out of admin pages, stored errors and logs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

MASK = "********"
# Slack tokens (xoxb-, xoxp-, xapp-...), Slack webhook URLs and paths, bearer headers and the user
# info of any URL (``postgres://user:password@host``), wherever they appear: (pattern, what is
# kept of a match).
_PATTERNS = [
    (re.compile(r"\bxox[a-z]-[A-Za-z0-9-]+"), MASK),
    (re.compile(r"\bxapp-[A-Za-z0-9-]+"), MASK),
    (
        re.compile(r"(hooks\.slack(?:-gov)?\.com/(?:services/)?)[^\s'\"<>,)*]+", re.IGNORECASE),
        r"\g<1>" + MASK,
    ),
    (re.compile(r"(/services/)[^\s'\"<>,)]+"), r"\g<1>" + MASK),
    (re.compile(r"(Bearer\s+)[^\s'\",}]+", re.IGNORECASE), r"\g<1>" + MASK),
    (
        re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@'\"<>]+@", re.IGNORECASE),
        r"\g<1>" + MASK + "@",
    ),
]
# Any URL, for the SDK's log lines: a webhook URL is a credential wherever it is hosted.
_URL = re.compile(r"\b(https?://[^/\s'\"]+)(/[^\s'\",}]*)")


# Characters of a secret URL's path kept in clear, so operators can tell two webhooks apart.
VISIBLE_TAIL = 4


def is_url(value: str) -> bool:
    return "://" in (value or "")


def mask_url(url: str) -> str:
    """A URL safe to show: scheme, host and port, and the last characters of a long path.

    ``https://hooks.slack.com/services/T0/B0/abcd1234`` becomes ``https://hooks.slack.com/…1234``.
    User info, the query and all but the tail of the path are dropped: a webhook URL carries its
    credential in the path. The one masker for every page, error and log line; it never raises
    (an unparsable port is left out rather than failing the page that shows it).
    """
    value = (url or "").strip()
    try:
        parts = urlsplit(value)
    except ValueError:
        return MASK
    if not parts.scheme or not parts.netloc:
        return mask_secret(value)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    if port:
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    tail = path[-VISIBLE_TAIL:] if len(path) >= 3 * VISIBLE_TAIL else ""
    return f"{parts.scheme}://{host}/…{tail}"


def mask_secret(value: str) -> str:
    """Show at most the last 4 characters of a secret, and only of a long one."""
    if len(value) < 16:
        return MASK
    return f"…{value[-4:]}"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the given secrets (those of 6 characters or more) and anything shaped like
    a secret masked: Slack tokens and webhook URLs, bearer headers, credentials in URLs.

    The building block; a run's text goes through ``orchestrator.redaction.redact_run_text``,
    which knows the channels' secrets and the run's secret kwargs.
    """
    for secret in sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _mask_url_path(match: re.Match[str]) -> str:
    path = match.group(2)
    # Web API method paths (/api/chat.postMessage) name no secret and help debugging.
    if MASK in path or path.startswith("/api/"):
        return match.group(0)
    return f"{match.group(1)}/{MASK}"


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the final message of every record it sees.

    Besides what :func:`redact` masks, the path of every URL is masked (Web API method paths
    excepted): a webhook that is not on hooks.slack.com has no ``/services/`` to recognise it by.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _URL.sub(_mask_url_path, redact(message))
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def sdk_logger() -> logging.Logger:
    """The logger handed to slack-sdk clients.

    slack-sdk formats its DEBUG lines (which contain the webhook URL) only when the logger's
    *own* level is DEBUG or unset: an explicit INFO level skips them, and the filter masks
    whatever an operator re-enables.
    """
    logger = logging.getLogger("orchestrator.notifications.slack_sdk")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
