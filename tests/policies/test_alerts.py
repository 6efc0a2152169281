import datetime as dt

import pytest
from freezegun import freeze_time

from orchestrator.policies.alerts import (
    Action,
    AlertPolicy,
    AlertState,
    DeliveryRetryPolicy,
)

T0 = "2026-03-01 12:00:00"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_first_failure_is_sent_and_awaits_recovery():
    with freeze_time(T0):
        decision = AlertPolicy(cooldown=900).on_failure(AlertState(), now())
    assert decision.action is Action.SEND
    assert decision.suppressed_count == 0
    assert decision.state == AlertState(
        last_sent_at=dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC),
        suppressed_count=0,
        awaiting_recovery=True,
    )


def test_failures_inside_the_cooldown_are_suppressed_and_counted_then_reported():
    policy = AlertPolicy(cooldown=900)
    with freeze_time(T0) as clock:
        state = policy.on_failure(AlertState(), now()).state
        actions = []
        for _ in range(3):
            clock.tick(dt.timedelta(minutes=4))
            decision = policy.on_failure(state, now())
            state = decision.state
            actions.append((decision.action, decision.suppressed_count))
        assert actions == [(Action.SUPPRESS, 1), (Action.SUPPRESS, 2), (Action.SUPPRESS, 3)]
        clock.tick(dt.timedelta(minutes=3))  # 15 minutes after the alert
        decision = policy.on_failure(state, now())
    assert decision.action is Action.SEND
    assert decision.suppressed_count == 3
    assert decision.state.suppressed_count == 0
    assert decision.state.last_sent_at == dt.datetime(2026, 3, 1, 12, 15, tzinfo=dt.UTC)


def test_the_cooldown_ends_exactly_after_its_length():
    policy = AlertPolicy(cooldown=60)
    with freeze_time(T0) as clock:
        state = policy.on_retry(AlertState(), now()).state
        clock.tick(dt.timedelta(seconds=59.999))
        assert policy.on_retry(state, now()).action is Action.SUPPRESS
        clock.tick(dt.timedelta(milliseconds=1))
        assert policy.on_retry(state, now()).action is Action.SEND


def test_a_zero_cooldown_sends_every_alert():
    policy = AlertPolicy(cooldown=0)
    with freeze_time(T0):
        state = policy.on_failure(AlertState(), now()).state
        assert policy.on_failure(state, now()).action is Action.SEND


def test_a_retry_alert_never_awaits_a_recovery():
    with freeze_time(T0):
        decision = AlertPolicy().on_retry(AlertState(), now())
    assert decision.action is Action.SEND
    assert decision.state.awaiting_recovery is False


@pytest.mark.parametrize(
    ("in_a_row", "expected"),
    [(1, Action.HOLD), (2, Action.HOLD), (3, Action.SEND), (4, Action.SEND)],
)
def test_failures_below_the_threshold_are_held(in_a_row, expected):
    policy = AlertPolicy(cooldown=900, alert_after_failures=3)
    with freeze_time(T0):
        decision = policy.on_failure(AlertState(), now(), consecutive_failures=in_a_row)
    assert decision.action is expected
    if expected is Action.HOLD:
        assert decision.state == AlertState()  # held failures are neither sent nor counted
        assert "alerts from 3" in decision.reason


def test_a_recovery_is_sent_once_after_an_alerted_failure_even_inside_the_cooldown():
    policy = AlertPolicy(cooldown=900)
    with freeze_time(T0) as clock:
        failed = policy.on_failure(AlertState(), now()).state
        clock.tick(dt.timedelta(seconds=30))
        first = policy.on_recovery(failed, now())
        second = policy.on_recovery(first.state, now())
    assert first.action is Action.SEND
    assert first.state.awaiting_recovery is False
    assert second.action is Action.IGNORE


def test_no_recovery_without_an_alerted_failure():
    policy = AlertPolicy(alert_after_failures=2)
    with freeze_time(T0):
        held = policy.on_failure(AlertState(), now(), consecutive_failures=1)
        assert policy.on_recovery(held.state, now()).action is Action.IGNORE


def test_a_flapping_task_pages_once_per_cooldown():
    policy = AlertPolicy(cooldown=900)
    with freeze_time(T0) as clock:
        state = policy.on_failure(AlertState(), now()).state
        state = policy.on_recovery(state, now()).state
        clock.tick(dt.timedelta(minutes=5))
        again = policy.on_failure(state, now())
        assert again.action is Action.SUPPRESS
        # Not alerted, so its recovery is not owed either.
        assert policy.on_recovery(again.state, now()).action is Action.IGNORE


@pytest.mark.parametrize("kwargs", [{"cooldown": -1}, {"alert_after_failures": 0}])
def test_invalid_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        AlertPolicy(**kwargs)


def test_delivery_backoff_table_without_jitter():
    policy = DeliveryRetryPolicy(base_delay=1, max_delay=15, jitter=False, max_attempts=8)
    assert [policy.delay_for(n) for n in range(1, 8)] == [1, 2, 4, 8, 15, 15, 15]


def test_delivery_backoff_jitter_stays_between_half_and_all_of_the_delay():
    low = DeliveryRetryPolicy(base_delay=2, random=lambda: 0.0)
    high = DeliveryRetryPolicy(base_delay=2, random=lambda: 1.0)
    assert [low.delay_for(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert [high.delay_for(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]


def test_retry_after_is_honoured_as_given():
    policy = DeliveryRetryPolicy(jitter=False)
    assert policy.delay_for(1, retry_after=7) == 7.0
    assert policy.delay_for(3, retry_after=0) == 0.0
    assert policy.delay_for(1, retry_after=-5) == 0.0
