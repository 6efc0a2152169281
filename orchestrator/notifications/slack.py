"""Slack: an incoming webhook, or ``chat.postMessage`` with the bot token from settings."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from slack_sdk import WebClient, WebhookClient
from slack_sdk.errors import SlackApiError, SlackClientError, SlackRequestError
from slack_sdk.webhook import WebhookResponse

from orchestrator.conf import conf
from orchestrator.notifications import messages
from orchestrator.notifications.base import Channel, NotificationError
from orchestrator.notifications.events import TEST_EVENT, Alert, Message, Report, truncate
from orchestrator.notifications.outbound import (
    OutboundRefused,
    check_url,
    guarded_open,
    url_refusal,
)
from orchestrator.notifications.redact import redact, sdk_logger

HTTP_TIMEOUT = 10  # seconds per request; the delivery policy bounds the total
HEADER_CHARS = 150  # Block Kit's limit for a header's text
SECTION_CHARS = 3000
REPORT_ROWS = 10

# API errors worth retrying; any other error of an ``ok: false`` answer will fail the same way
# next time (invalid_auth, channel_not_found, not_in_channel, is_archived, invalid_blocks...).
TRANSIENT_API_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
EMOJI = {
    "failure": ":red_circle:",
    "retry": ":large_yellow_circle:",
    "recovery": ":large_green_circle:",
    "report": ":bar_chart:",
    TEST_EVENT: ":wave:",
}
_CHANNEL = re.compile(r"^#?[a-z0-9][a-z0-9._-]{0,79}$|^[CGDU][A-Z0-9]{6,}$")
# The error codes Slack documents for incoming webhooks and chat.postMessage. Only these are
# quoted in stored errors and the admin: the body of any other answer (a server that is not
# Slack, an HTML error page) is never reflected back.
SLACK_ERROR_CODES = frozenset(
    {
        # incoming webhooks
        "invalid_payload",
        "user_not_found",
        "channel_not_found",
        "channel_is_archived",
        "action_prohibited",
        "posting_to_general_channel_denied",
        "too_many_attachments",
        "no_service",
        "no_service_id",
        "no_team",
        "team_disabled",
        "invalid_token",
        "no_active_hooks",
        "rate_limited",
        # chat.postMessage
        "as_user_not_supported",
        "duplicate_channel_not_found",
        "ekm_access_denied",
        "invalid_blocks",
        "invalid_blocks_format",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "is_archived",
        "message_limit_exceeded",
        "messages_tab_disabled",
        "metadata_must_be_sent_from_app",
        "metadata_too_large",
        "msg_too_long",
        "no_text",
        "not_in_channel",
        "ratelimited",
        "restricted_action",
        "restricted_action_non_threadable_channel",
        "restricted_action_read_only_channel",
        "restricted_action_thread_locked",
        "restricted_action_thread_only_channel",
        "slack_connect_canvas_sharing_blocked",
        "slack_connect_file_link_sharing_blocked",
        "team_access_not_granted",
        "access_denied",
        "account_inactive",
        "deprecated_endpoint",
        "enterprise_is_restricted",
        "invalid_auth",
        "method_deprecated",
        "missing_scope",
        "not_allowed_token_type",
        "not_authed",
        "no_permission",
        "org_login_required",
        "token_expired",
        "token_revoked",
        "two_factor_setup_required",
        "accesslimited",
        "fatal_error",
        "internal_error",
        "invalid_arg_name",
        "invalid_arguments",
        "invalid_array_arg",
        "invalid_charset",
        "invalid_form_data",
        "invalid_post_type",
        "missing_post_type",
        "request_timeout",
        "service_unavailable",
        "team_added_to_org",
    }
)
# Bytes of an answer read at most: a webhook's answer is a short code; the Web API's JSON echoes
# the message posted (at most 40,000 characters of text plus its blocks).
MAX_WEBHOOK_ANSWER_BYTES = 65536
MAX_API_ANSWER_BYTES = 4 * 1024 * 1024


def slack_error_code(text: str | None) -> str:
    """``text`` when it is one of Slack's documented error codes, else an empty string."""
    code = (text or "").strip()
    return code if code in SLACK_ERROR_CODES else ""


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    # A backtick inside the error text would close the code block early.
    return "```" + escape(text).replace("`", "'") + "```"


def _header(text: str) -> dict[str, Any]:
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": truncate(text, HEADER_CHARS), "emoji": True},
    }


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, SECTION_CHARS)}}


LOG_TITLE = "*Last lines of the log*\n"


def _log_section(log_tail: str) -> dict[str, Any]:
    """The tail of the run's log in a code block; escaping may lengthen it, so the block keeps
    the end of it that fits the section."""
    room = SECTION_CHARS - len(LOG_TITLE) - 6  # the two fences
    body = escape(log_tail).replace("`", "'")
    if len(body) > room:
        body = "…" + body[-(room - 1) :]
    return _section(f"{LOG_TITLE}```{body}```")


def _button(text: str, url: str) -> dict[str, Any]:
    return {
        "type": "actions",
        "elements": [{"type": "button", "text": {"type": "plain_text", "text": text}, "url": url}],
    }


def alert_blocks(alert: Alert) -> list[dict[str, Any]]:
    """The Block Kit blocks of an alert."""
    blocks: list[dict[str, Any]] = [
        _header(f"{EMOJI.get(alert.event, '')} {messages.headline(alert)}".strip()),
        _section(escape(messages.summary(alert))),
    ]
    if facts := messages.fields(alert):
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{label}*\n{escape(value)}"}
                    for label, value in facts[:10]  # Block Kit allows 10 fields per section
                ],
            }
        )
    if alert.error_type or alert.error_message:
        kind = messages.one_line(alert.error_type) or "Error"
        text = f"*{escape(kind)}*"
        if alert.error_message:
            text += "\n" + _code(alert.error_message)
        blocks.append(_section(text))
    if alert.log_tail:
        blocks.append(_log_section(alert.log_tail))
    if note := messages.suppressed_note(alert):
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
    if alert.run_url:
        blocks.append(_button("View run", alert.run_url))
    return blocks


def report_blocks(report: Report) -> list[dict[str, Any]]:
    """The Block Kit blocks of a failure report (the worst tasks first)."""
    blocks: list[dict[str, Any]] = [
        _header(f"{EMOJI['report']} {messages.report_headline(report)}"),
        _section(
            f"{messages.format_time(report.since)} to {messages.format_time(report.until)}: "
            f"{report.total_failures} failed of {report.total_runs} runs."
        ),
    ]
    for row in report.rows[:REPORT_ROWS]:
        name = escape(messages.one_line(row.task_name))
        title = f"*<{row.url}|{name}>*" if row.url else f"*{name}*"
        text = (
            f"{title}\n{row.failures} of {row.runs} runs failed "
            f"({messages.percent(row.failure_rate)}), {row.retries} retries"
        )
        if row.last_error:
            error = escape(truncate(messages.one_line(row.last_error), 200)).replace("`", "'")
            text += f"\nLast error {messages.format_time(row.last_error_at)}: `{error}`"
        blocks.append(_section(text))
    if len(report.rows) > REPORT_ROWS:
        more = len(report.rows) - REPORT_ROWS
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"... and {more} more"}]}
        )
    return blocks


def report_text(report: Report) -> str:
    return "\n".join(
        [messages.report_headline(report), *messages.report_text_lines(report, REPORT_ROWS)]
    )


def _header_value(headers: Mapping[str, Any] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return str(value[0] if isinstance(value, list | tuple) else value)
    return None


def retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds from a ``Retry-After`` header (Slack sends whole seconds), or None."""
    value = _header_value(headers, "Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def webhook_error(
    status: int, body: str, headers: Mapping[str, Any] | None = None
) -> NotificationError | None:
    """Classify an incoming-webhook answer: None when it was accepted (any 2xx)."""
    if 200 <= status < 300:
        # Slack answers "200 ok"; Slack-compatible servers (Mattermost, Rocket.Chat) answer 2xx
        # with other bodies. Retrying an accepted post would only duplicate it.
        return None
    # Slack answers errors with a documented code ("invalid_payload", "no_service"); the body of
    # any other answer is neither stored nor shown.
    code = slack_error_code(body)
    detail = f"Slack webhook answered HTTP {status}" + (f" {code}" if code else "")
    if 300 <= status < 400:
        return NotificationError(detail + " (a redirect, never followed)", permanent=True)
    if status == 429:
        return NotificationError(detail + " (rate limited)", retry_after=retry_after(headers))
    if status >= 500:
        return NotificationError(detail)
    if status == 404:
        # The webhook was deleted or its app uninstalled: it will never work again.
        return NotificationError(detail + " (webhook not found)", permanent=True)
    if 400 <= status < 500:
        return NotificationError(detail, permanent=True)
    return NotificationError(detail)


def api_error(
    status: int, error: str, headers: Mapping[str, Any] | None = None
) -> NotificationError:
    """Classify a failed Web API call from its HTTP status and its ``error`` code."""
    code = slack_error_code(error)
    detail = f"Slack chat.postMessage failed: HTTP {status}" + (f", error {code}" if code else "")
    if status == 429 or code == "ratelimited":
        return NotificationError(detail + " (rate limited)", retry_after=retry_after(headers))
    if status >= 500 or code in TRANSIENT_API_ERRORS:
        return NotificationError(detail)
    return NotificationError(detail, permanent=True)


class SlackAnswerNotJSON(Exception):
    """The Web API answered with something that is not Slack's JSON (only its status is kept)."""

    def __init__(self, status: int, headers: Mapping[str, Any] | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers


def _read_answer(response: Any, limit: int) -> str:
    charset = response.headers.get_content_charset() or "utf-8"
    return str(response.read(limit).decode(charset, errors="replace"))


class GuardedWebhookClient(WebhookClient):
    """slack-sdk's webhook client, opening its requests through
    :func:`orchestrator.notifications.outbound.guarded_open` (allowed hosts, checked addresses,
    no redirects, no proxy) instead of ``urllib.request.urlopen``.

    It overrides the SDK's one method that opens the connection (slack-sdk 3.x); the SSRF tests
    with real local servers fail if a new SDK release stops calling it.
    """

    def _perform_http_request_internal(self, url: str, req: urllib.request.Request) -> Any:
        response = guarded_open(req, self.timeout, what="The webhook URL", context=self.ssl)
        return WebhookResponse(
            url=url,
            status_code=response.status,
            body=_read_answer(response, MAX_WEBHOOK_ANSWER_BYTES),
            headers=response.headers,  # type: ignore[arg-type]
        )


class GuardedWebClient(WebClient):
    """slack-sdk's Web API client, opening its requests like :class:`GuardedWebhookClient`.

    An answer that is not JSON (a redirect, an HTML error page) raises
    :class:`SlackAnswerNotJSON`, which keeps only the status.
    """

    def _perform_urllib_http_request_internal(
        self, url: str, req: urllib.request.Request
    ) -> dict[str, Any]:
        response = guarded_open(
            req, self.timeout, what="SLACK_API_URL", from_settings=True, context=self.ssl
        )
        body = _read_answer(response, MAX_API_ANSWER_BYTES)
        if not body.lstrip().startswith("{"):
            raise SlackAnswerNotJSON(response.status, response.headers)  # type: ignore[arg-type]
        return {"status": response.status, "headers": response.headers, "body": body}


class SlackChannel(Channel):
    """Posts Block Kit messages to a webhook URL, or to a channel with the bot token.

    Retries are left to the delivery policy: the SDK's own retry handlers are switched off
    (its rate-limit handler would sleep the whole ``Retry-After`` inside the call).
    """

    kind = "slack"
    label = "Slack"

    @property
    def is_webhook(self) -> bool:
        return self.target.startswith(("https://", "http://"))

    @classmethod
    def validate_target(cls, target: str) -> None:
        target = (target or "").strip()
        if target.startswith(("https://", "http://")):
            try:
                parts = urlsplit(target)
                parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
            except ValueError:
                raise ValidationError(
                    {
                        "target": "The webhook URL's port must be a number from 1 to 65535; "
                        "enter the URL Slack gave you, such as "
                        "https://hooks.slack.com/services/T0000/B0000/abcd1234."
                    }
                ) from None
            if not parts.hostname or len(parts.path) < 2 or any(c.isspace() for c in target):
                raise ValidationError(
                    {
                        "target": "Enter the full incoming-webhook URL Slack gave you, such as "
                        "https://hooks.slack.com/services/T0000/B0000/abcd1234."
                    }
                )
            if refusal := url_refusal(target):
                raise ValidationError({"target": refusal})
            return
        if not _CHANNEL.match(target):
            raise ValidationError(
                {
                    "target": "Enter an incoming-webhook URL, or a channel name such as #alerts "
                    "or a channel ID such as C0123456789."
                }
            )

    def secrets(self) -> list[str]:
        # The bot token always (an error may quote the request); a webhook URL is a credential,
        # and so is its path, which urllib's errors quote without the host.
        secrets = [conf.SLACK_BOT_TOKEN]
        if self.is_webhook:
            secrets.append(self.target)
            secrets.append(urlsplit(self.target).path)
        return secrets

    def payload(self, message: Message) -> dict[str, Any]:
        if isinstance(message, Report):
            body: dict[str, Any] = {
                "text": escape(report_text(message)),
                "blocks": report_blocks(message),
            }
        else:
            body = {
                "text": escape(messages.fallback_text(message)),
                "blocks": alert_blocks(message),
            }
        if not self.is_webhook:
            return {"channel": self.target, **body}
        return body

    def notify(self, message: Message) -> None:
        payload = self.payload(message)
        try:
            if self.is_webhook:
                self._send_webhook(payload)
            else:
                self._post_message(payload)
        except NotificationError:
            raise
        except OutboundRefused as err:
            # The target (or SLACK_API_URL) breaks the outbound rules: nothing was sent, and
            # nothing will be until someone changes it or the setting.
            raise NotificationError(f"Slack request refused: {err}", permanent=True) from None
        except SlackRequestError as err:
            raise NotificationError(
                f"Slack request refused before sending: {redact(str(err), self.secrets())}",
                permanent=True,
            ) from None
        except (SlackClientError, OSError) as err:
            # URLError, timeouts, refused connections: the network, not the message.
            reason = getattr(err, "reason", None) or err
            raise NotificationError(
                f"Slack unreachable: {type(err).__name__}: {redact(str(reason), self.secrets())}"
            ) from None

    def _send_webhook(self, payload: dict[str, Any]) -> None:
        check_url(self.target)  # again now: the settings may have changed since it was saved
        client = GuardedWebhookClient(
            self.target, timeout=HTTP_TIMEOUT, logger=sdk_logger(), retry_handlers=[]
        )
        response = client.send_dict(payload)
        if error := webhook_error(response.status_code, response.body, response.headers):
            raise error

    def _post_message(self, payload: dict[str, Any]) -> None:
        token = conf.SLACK_BOT_TOKEN
        if not token:
            raise NotificationError(
                'Slack bot token missing: set ORCHESTRATOR["SLACK_BOT_TOKEN"] or '
                "$ORCHESTRATOR_SLACK_BOT_TOKEN, or use an incoming-webhook URL as the target.",
                permanent=True,
            )
        check_url(conf.SLACK_API_URL, what="SLACK_API_URL", from_settings=True)
        client = GuardedWebClient(
            token=token,
            base_url=conf.SLACK_API_URL,
            timeout=HTTP_TIMEOUT,
            logger=sdk_logger(),
            retry_handlers=[],
        )
        try:
            client.chat_postMessage(**payload)
        except SlackAnswerNotJSON as err:
            raise api_error(err.status, "", err.headers) from None
        except SlackApiError as err:
            response = err.response
            data = response.data if isinstance(response.data, dict) else {}
            raise api_error(
                response.status_code, str(data.get("error", "")), response.headers
            ) from None
