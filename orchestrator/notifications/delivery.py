"""The notification service: decide per channel, record the delivery, send it with retries.

The dispatcher's signals call :func:`notify_run` in the worker that ran the task. It only reads
and writes a few rows and queues a Celery message (on commit); the network is touched later by
:func:`deliver`, in the delivery task, so a slow or dead Slack never delays or fails a run.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
)

from orchestrator import rollups, runlog
from orchestrator.conf import conf
from orchestrator.models import (
    AlertState,
    NotificationChannel,
    NotificationDelivery,
    ScheduledTask,
    TaskRun,
    TaskState,
)
from orchestrator.notifications.base import Channel, NotificationError
from orchestrator.notifications.email import EmailChannel
from orchestrator.notifications.events import (
    ALERT_ERROR_CHARS,
    TEST_EVENT,
    Alert,
    Event,
    Message,
    Report,
    connection_test_alert,
    message_from_dict,
    run_url,
    truncate,
)
from orchestrator.notifications.redact import redact
from orchestrator.notifications.registry import UnknownChannelKind, get_channel
from orchestrator.policies.alerts import Action, AlertDecision, AlertPolicy, DeliveryRetryPolicy
from orchestrator.policies.alerts import AlertState as PolicyState
from orchestrator.redaction import redact_run_text
from orchestrator.routing import send_task_message
from orchestrator.task_names import DELIVER_NOTIFICATION

logger = logging.getLogger(__name__)

DEFAULT_RETRY_POLICY = DeliveryRetryPolicy()
TEST_POLICY = DeliveryRetryPolicy(max_attempts=1)
# A delivery that a server keeps rate limiting is given up once its Retry-After would take it
# past this long after it was queued: an alert that late has lost its point.
RATE_LIMIT_GIVE_UP_AFTER = dt.timedelta(hours=1)
# A deferred delivery's message that arrives less than this before its retry_at is sent (the
# broker's countdowns are not to the millisecond).
RETRY_AT_TOLERANCE = 1.0


# --- choosing channels and deciding -------------------------------------------------------


def channels_for(task: ScheduledTask, event: str) -> list[NotificationChannel]:
    """Enabled channels of ``task`` subscribed to ``event``.

    The channels are :meth:`ScheduledTask.notification_targets`: the selected ones, or every
    enabled default channel; a task whose selected channels are all disabled gets no alert (it
    chose them).
    """
    channels, _ = task.notification_targets()
    return [c for c in channels if c.enabled and event in (c.events or [])]


def consecutive_failures(task: ScheduledTask) -> int:
    """Final failures of ``task`` since its last success (the run being reported included).

    Read from the task's :class:`~orchestrator.models.TaskState`, which the dispatcher keeps as
    runs end: one row, whatever the length of the history.
    """
    count = (
        TaskState.objects.filter(pk=task.pk).values_list("consecutive_failures", flat=True).first()
    )
    return max(count or 0, 1)


def alert_from_run(event: str, run: TaskRun) -> Alert:
    """The alert for ``event`` about ``run`` (its scheduled task and definition are read).

    The text it quotes goes through :func:`~orchestrator.redaction.redact_run_text` once more:
    runs are stored redacted, and this holds for rows written before that or by other code.
    """
    task = run.scheduled_task
    limit = min(ALERT_ERROR_CHARS, conf.MAX_ERROR_CHARS)
    kwargs = task.kwargs if run.kwargs_override is None else run.kwargs_override
    return Alert(
        event=event,
        task_name=task.name,
        task_id=task.pk,
        definition=task.task_definition.name,
        attempt=run.attempt,
        max_attempts=run.max_attempts,
        duration=run.duration.total_seconds() if run.duration is not None else None,
        queue=run.queue or task.queue or "",
        error_type=run.error_type or "",
        error_message=truncate(redact_run_text(run.error_message or "", kwargs), limit),
        started_at=run.started_at,
        next_retry_at=run.next_retry_at if event == Event.RETRY else None,
        run_id=run.pk,
        run_url=run_url(run.pk) if run.pk else "",
        note=truncate(redact_run_text(run.note or "", kwargs), limit),
        log_tail=runlog.tail(run.log) if event in (Event.FAILURE, Event.RETRY) else "",
    )


def policy_for(channel: NotificationChannel) -> AlertPolicy:
    return AlertPolicy(
        cooldown=float(channel.cooldown), alert_after_failures=channel.alert_after_failures
    )


def _snapshot(row: AlertState) -> PolicyState:
    return PolicyState(
        last_sent_at=row.last_sent_at,
        suppressed_count=row.suppressed_count,
        awaiting_recovery=row.awaiting_recovery,
    )


def _store(row: AlertState, state: PolicyState) -> None:
    row.last_sent_at = state.last_sent_at
    row.suppressed_count = state.suppressed_count
    row.awaiting_recovery = state.awaiting_recovery
    row.save(update_fields=["last_sent_at", "suppressed_count", "awaiting_recovery"])


def _record(
    channel: NotificationChannel, run: TaskRun, event: str, decision: AlertDecision
) -> NotificationDelivery:
    now = timezone.now()
    send = decision.action is Action.SEND
    status = NotificationDelivery.Status
    if not send:
        rollups.count_alert(channel.pk, event, status.SUPPRESSED)
    return NotificationDelivery.objects.create(
        channel=channel,
        scheduled_task=run.scheduled_task,
        task_run=run,
        event=event,
        status=status.PENDING if send else status.SUPPRESSED,
        suppressed_count=decision.suppressed_count,
        suppressed_reason="" if send else decision.reason,
        created_at=now,
        finished_at=None if send else now,
    )


def notify_run(event: str, run: TaskRun, *, note: str = "") -> list[NotificationDelivery]:
    """Apply each channel's alert policy to ``event`` about ``run``; queue the sends.

    ``note`` replaces the run's own in the alert (a pause says why the task was paused).
    Returns the delivery rows written (pending ones are sent after the transaction commits).
    """
    if event == Event.RECOVERY:
        return _notify_recovery(run)
    task = run.scheduled_task
    channels = channels_for(task, event)
    if not channels:
        return []
    alert = alert_from_run(event, run)
    if note:
        alert = replace(alert, note=truncate(note, ALERT_ERROR_CHARS))
    in_a_row = 1
    if event == Event.FAILURE and any(c.alert_after_failures > 1 for c in channels):
        in_a_row = consecutive_failures(task)
    now = timezone.now()
    deliveries = []
    with transaction.atomic():
        for channel in channels:
            # The row lock serialises workers failing the same task at the same moment, so a
            # storm cannot slip two alerts through one cooldown.
            row, _ = AlertState.objects.select_for_update().get_or_create(
                channel=channel, scheduled_task=task, event=event
            )
            policy = policy_for(channel)
            if event == Event.FAILURE:
                decision = policy.on_failure(_snapshot(row), now, in_a_row)
            else:
                decision = policy.on_retry(_snapshot(row), now)
            _store(row, decision.state)
            delivery = _record(channel, run, event, decision)
            deliveries.append(delivery)
            if decision.action is Action.SEND:
                enqueue(delivery.pk, alert.with_counts(decision.suppressed_count, in_a_row))
    return deliveries


def _notify_recovery(run: TaskRun) -> list[NotificationDelivery]:
    task = run.scheduled_task
    # The common case (a success with no alerted failure before it) costs this one query.
    if not AlertState.objects.filter(
        scheduled_task=task, event=Event.FAILURE, awaiting_recovery=True
    ).exists():
        return []
    now = timezone.now()
    deliveries = []
    alert = None
    with transaction.atomic():
        rows = (
            AlertState.objects.select_for_update()
            .filter(scheduled_task=task, event=Event.FAILURE, awaiting_recovery=True)
            .select_related("channel")
        )
        for row in rows:
            channel = row.channel
            decision = policy_for(channel).on_recovery(_snapshot(row), now)
            _store(row, decision.state)
            # Whoever was paged for the failure hears that it is over, if it listens for that.
            if not channel.enabled or Event.RECOVERY not in (channel.events or []):
                continue
            if decision.action is not Action.SEND:
                continue
            alert = alert or alert_from_run(Event.RECOVERY, run)
            delivery = _record(channel, run, Event.RECOVERY, decision)
            deliveries.append(delivery)
            enqueue(delivery.pk, alert)
    return deliveries


def notify_scheduler(change: str, note: str) -> list[NotificationDelivery]:
    """Alert the default channels that the scheduler ``"stopped"`` or is ``"back"``; ``note``
    says more. The caller (the watchdog) sends each change once; no cooldown applies."""
    channels = [
        channel
        for channel in NotificationChannel.objects.filter(enabled=True, is_default=True)
        if Event.SCHEDULER in (channel.events or [])
    ]
    alert = Alert(event=Event.SCHEDULER, task_name=change, note=note)
    deliveries = []
    with transaction.atomic():
        for channel in channels:
            delivery = NotificationDelivery.objects.create(
                channel=channel,
                event=Event.SCHEDULER,
                status=NotificationDelivery.Status.PENDING,
                created_at=timezone.now(),
            )
            deliveries.append(delivery)
            enqueue(delivery.pk, alert)
    return deliveries


def enqueue(delivery_id: int, message: Message) -> None:
    """Queue the delivery task once the current transaction commits."""
    _enqueue_data(delivery_id, message.to_dict())


def _enqueue_data(delivery_id: int, data: dict[str, Any], countdown: float | None = None) -> None:
    def publish() -> None:
        options: dict[str, Any] = (
            {"queue": conf.NOTIFICATION_QUEUE} if conf.NOTIFICATION_QUEUE else {}
        )
        if countdown:
            options["countdown"] = countdown
        try:
            send_task_message(DELIVER_NOTIFICATION, args=[delivery_id, data], **options)
        except Exception as err:
            logger.exception("Could not queue notification delivery %s", delivery_id)
            fail_delivery(
                NotificationDelivery.objects.filter(pk=delivery_id),
                error=f"Could not queue the delivery: {type(err).__name__}",
                finished_at=timezone.now(),
            )

    transaction.on_commit(publish, robust=True)


# --- sending -------------------------------------------------------------------------------


def _is_transient(err: BaseException) -> bool:
    return isinstance(err, NotificationError) and not err.permanent


def _wait(policy: DeliveryRetryPolicy) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        err = state.outcome.exception() if state.outcome else None
        return policy.delay_for(state.attempt_number, getattr(err, "retry_after", None))

    return wait


@dataclass
class SendResult:
    attempts: int
    error: NotificationError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def retry_policy() -> DeliveryRetryPolicy:
    """The delivery retry policy: ``ORCHESTRATOR["NOTIFICATION_RETRY"]`` over the defaults.

    The setting is a dict of :class:`DeliveryRetryPolicy` fields, such as
    ``{"max_attempts": 5, "max_seconds": 60, "base_delay": 1, "max_delay": 15}``.
    """
    overrides = conf.NOTIFICATION_RETRY
    if not overrides:
        return DEFAULT_RETRY_POLICY
    allowed = {"max_attempts", "max_seconds", "base_delay", "max_delay", "jitter"}
    return DeliveryRetryPolicy(**{k: v for k, v in overrides.items() if k in allowed})


def send_with_retries(
    channel: Channel,
    message: Message,
    *,
    policy: DeliveryRetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    label: str = "",
) -> SendResult:
    """Send ``message`` through ``channel``, retrying transient errors per ``policy``."""
    policy = policy or retry_policy()
    attempts = 0

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        try:
            channel.notify(message)
        except NotificationError:
            raise
        except Exception as err:
            # A bug in a channel class: retrying cannot help, and its text may hold anything.
            logger.exception("Channel %s raised %s", channel.kind, type(err).__name__)
            raise NotificationError(
                f"Unexpected {type(err).__name__} in the {channel.kind} channel", permanent=True
            ) from None

    def before_sleep(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        logger.warning(
            "Notification %s to %s %s failed on attempt %d, retrying in %.1fs: %s",
            label or message.event,
            channel.kind,
            channel.masked_target,
            state.attempt_number,
            state.upcoming_sleep,
            err,
        )

    retrying = Retrying(
        stop=stop_after_attempt(policy.max_attempts) | stop_before_delay(policy.max_seconds),
        wait=_wait(policy),
        retry=retry_if_exception(_is_transient),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        retrying(attempt)
    except NotificationError as err:
        return SendResult(attempts=attempts, error=err)
    return SendResult(attempts=attempts)


def mark_channel_error(channel: NotificationChannel, error: str) -> None:
    NotificationChannel.objects.filter(pk=channel.pk).update(
        last_error=error, last_error_at=timezone.now()
    )


def deliver(
    delivery_id: int,
    data: dict[str, Any],
    *,
    policy: DeliveryRetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Send a pending delivery and record the outcome; return its status.

    A delivery that is no longer pending (a redelivered Celery message) is not sent again.
    A server that answers "rate limited" with a ``Retry-After`` longer than the retry budget
    (``ORCHESTRATOR["NOTIFICATION_RETRY"]``) gets its wait: the delivery goes back to
    ``pending`` with ``retry_at`` set and is queued again with that countdown (``"pending"`` is
    returned), unless the wait would end more than ``RATE_LIMIT_GIVE_UP_AFTER`` after the
    delivery was queued. A message that arrives before ``retry_at`` (its countdown was capped
    at ``ORCHESTRATOR["MAX_BROKER_COUNTDOWN"]``) queues itself again for the rest.
    """
    delivery = NotificationDelivery.objects.select_related("channel").filter(pk=delivery_id).first()
    if delivery is None:
        return "missing"
    if delivery.status != NotificationDelivery.Status.PENDING:
        return str(delivery.status)
    if delivery.retry_at is not None:
        early = (delivery.retry_at - timezone.now()).total_seconds()
        if early > RETRY_AT_TOLERANCE:
            _enqueue_data(delivery_id, data, countdown=min(early, conf.MAX_BROKER_COUNTDOWN))
            return str(delivery.status)
    # Claim it: a second message for the same delivery (maintenance re-queued it while this one
    # waited in the broker, or the broker delivered it twice) finds it taken and sends nothing.
    claimed = NotificationDelivery.objects.filter(
        pk=delivery_id, status=NotificationDelivery.Status.PENDING
    ).update(status=NotificationDelivery.Status.SENDING)
    if not claimed:
        delivery.refresh_from_db(fields=["status"])
        return str(delivery.status)
    row = delivery.channel
    is_test = delivery.event == TEST_EVENT
    if not row.enabled and not is_test:
        return _finish(delivery, 0, "Channel disabled before the alert was sent")
    try:
        channel = get_channel(row.kind, row.target)
    except UnknownChannelKind as err:
        return _finish(delivery, 0, str(err))
    message = message_from_dict(data)
    if is_test:
        # One try: the operator waits for the answer in the delivery log.
        policy = TEST_POLICY
    result = send_with_retries(
        channel, message, policy=policy, sleep=sleep, label=f"delivery {delivery_id}"
    )
    if result.ok:
        if is_test:  # the channel works: its last error is history
            NotificationChannel.objects.filter(pk=row.pk).update(last_error="", last_error_at=None)
        return _finish(delivery, result.attempts)
    assert result.error is not None
    error = redact(result.error.message, channel.secrets())
    retry_after = result.error.retry_after
    if not result.error.permanent and retry_after is not None and not is_test:
        return _defer(delivery, data, result.attempts, error, retry_after)
    if result.error.permanent or is_test:
        mark_channel_error(row, error)
    logger.error(
        "Notification delivery %s to %s %s failed after %d attempt(s): %s",
        delivery_id,
        row.kind,
        channel.masked_target,
        result.attempts,
        error,
    )
    return _finish(delivery, result.attempts, error)


def fail_delivery(deliveries: QuerySet[NotificationDelivery], **fields: Any) -> int:
    """Mark ``deliveries`` (filtered on the status they must still have) failed with
    ``fields``, each counted in :class:`AlertCount` in the same transaction; return how many
    changed."""
    changed = 0
    for pk, channel_id, event in deliveries.values_list("pk", "channel_id", "event"):
        with transaction.atomic():
            if deliveries.filter(pk=pk).update(status=NotificationDelivery.Status.FAILED, **fields):
                rollups.count_alert(channel_id, event, NotificationDelivery.Status.FAILED)
                changed += 1
    return changed


def _defer(
    delivery: NotificationDelivery,
    data: dict[str, Any],
    attempts: int,
    error: str,
    retry_after: float,
) -> str:
    """Put a rate-limited delivery back to ``pending`` until the server's ``Retry-After`` has
    passed, and queue it with that countdown; give it up when the wait is too long.

    The row is written before the message is sent: the maintenance pass leaves a pending row
    alone until well after its ``retry_at`` (see ``requeue_stale_deliveries``), so it re-sends
    only a message that was lost, and the claim in :func:`deliver` lets one copy send.
    """
    now = timezone.now()
    wait = max(float(retry_after), 0.0)
    due = now + dt.timedelta(seconds=wait)
    if due > delivery.created_at + RATE_LIMIT_GIVE_UP_AFTER:
        limit = int(RATE_LIMIT_GIVE_UP_AFTER.total_seconds() // 60)
        logger.error(
            "Notification delivery %s given up: rate limited for %.0f s more, past %d min "
            "after it was queued",
            delivery.pk,
            wait,
            limit,
        )
        return _finish(
            delivery,
            attempts,
            f"{error}; the server asked to wait {wait:.0f} s more (Retry-After), which would "
            f"pass {limit} min after the alert was queued: given up.",
        )
    deferred = NotificationDelivery.objects.filter(
        pk=delivery.pk, status=NotificationDelivery.Status.SENDING
    ).update(
        status=NotificationDelivery.Status.PENDING,
        retry_at=due,
        requeued_at=None,  # a new message goes out: the maintenance pass may re-queue it once
        attempts=delivery.attempts + attempts,
        error=f"{error}; sending again at {due.isoformat(timespec='seconds')} (Retry-After).",
    )
    if not deferred:  # taken out of our hands meanwhile (the maintenance pass gave it up)
        delivery.refresh_from_db(fields=["status"])
        return str(delivery.status)
    logger.warning(
        "Notification delivery %s rate limited; sending it again in %.0f s (Retry-After)",
        delivery.pk,
        wait,
    )
    _enqueue_data(delivery.pk, data, countdown=min(wait, conf.MAX_BROKER_COUNTDOWN))
    return NotificationDelivery.Status.PENDING.value


def _finish(delivery: NotificationDelivery, attempts: int, error: str = "") -> str:
    now = timezone.now()
    # Attempts made before a rate limit deferred the delivery count too.
    delivery.attempts += attempts
    delivery.finished_at = now
    if error:
        delivery.status = NotificationDelivery.Status.FAILED
        delivery.error = error
    else:
        delivery.status = NotificationDelivery.Status.SENT
        delivery.sent_at = now
        delivery.error = ""  # a rate limit that deferred it is over
    with transaction.atomic():
        delivery.save(update_fields=["attempts", "finished_at", "status", "error", "sent_at"])
        rollups.count_alert(delivery.channel_id, delivery.event, delivery.status)
    return str(delivery.status)


def queue_test_notification(row: NotificationChannel) -> NotificationDelivery:
    """Queue a test message to ``row``, like any delivery; return its delivery row.

    The send runs in the delivery task (one attempt), never in the caller's request, and its
    outcome is written to the delivery log: an error also becomes the channel's last error, a
    success clears it. A disabled channel is tested too (that is how one is checked before it
    is enabled).
    """
    with transaction.atomic():
        delivery = NotificationDelivery.objects.create(
            channel=row,
            event=TEST_EVENT,
            status=NotificationDelivery.Status.PENDING,
            created_at=timezone.now(),
        )
        enqueue(delivery.pk, connection_test_alert())
    return delivery


@dataclass
class ReportOutcome:
    destination: str
    status: str
    error: str = ""


def report_channels() -> list[NotificationChannel]:
    return [
        c
        for c in NotificationChannel.objects.filter(enabled=True)
        if Event.REPORT in (c.events or [])
    ]


def send_report(
    report: Report,
    *,
    channels: Iterable[NotificationChannel] | None = None,
    to: Iterable[str] = (),
    policy: DeliveryRetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[ReportOutcome]:
    """Send ``report`` now: to ``channels`` (default: those subscribed to "report"), each
    recorded in the delivery log, and to the addresses in ``to``."""
    outcomes = []
    for row in report_channels() if channels is None else channels:
        delivery = NotificationDelivery.objects.create(
            channel=row, event=Event.REPORT, status=NotificationDelivery.Status.PENDING
        )
        status = deliver(delivery.pk, report.to_dict(), policy=policy, sleep=sleep)
        delivery.refresh_from_db(fields=["error"])
        outcomes.append(ReportOutcome(row.name, status, delivery.error))
    addresses = [a for a in to if a]
    if addresses:
        result = send_with_retries(
            EmailChannel(", ".join(addresses)), report, policy=policy, sleep=sleep, label="report"
        )
        outcomes.append(
            ReportOutcome(
                ", ".join(addresses),
                "sent" if result.ok else "failed",
                result.error.message if result.error else "",
            )
        )
    return outcomes
