import pytest

from orchestrator.policies.retry import MAX_DELAY, BackoffKind, RetryPolicy


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("fixed", [10, 10, 10, 10, 10, 10]),
        ("linear", [10, 20, 30, 40, 50, 60]),
        ("exponential", [10, 20, 40, 80, 100, 100]),
    ],
)
def test_delays_follow_the_backoff_kind_and_stop_at_the_cap(backoff, expected):
    policy = RetryPolicy(max_retries=6, backoff=backoff, delay=10, backoff_max=100)
    assert policy.schedule() == expected


def test_exponential_without_cap_doubles_from_the_base_delay():
    policy = RetryPolicy(max_retries=5, backoff=BackoffKind.EXPONENTIAL, delay=3)
    assert policy.schedule() == [3, 6, 12, 24, 48]


def test_cap_below_base_delay_caps_every_retry():
    for kind in BackoffKind:
        policy = RetryPolicy(max_retries=3, backoff=kind, delay=50, backoff_max=20)
        assert policy.schedule() == [20, 20, 20]


def test_huge_retry_numbers_do_not_overflow():
    policy = RetryPolicy(max_retries=3, backoff="exponential", delay=1)
    assert policy.base_delay(100_000) == MAX_DELAY
    assert RetryPolicy(backoff="linear", delay=1).base_delay(10**12) == MAX_DELAY


def test_zero_delay_never_waits_even_with_jitter():
    policy = RetryPolicy(max_retries=2, backoff="exponential", delay=0, jitter=True)
    assert [policy.delay_for(n) for n in (1, 2)] == [0, 0]


@pytest.mark.parametrize(("random_value", "expected"), [(0.0, 20.0), (0.5, 30.0), (1.0, 40.0)])
def test_jitter_stays_between_half_the_delay_and_the_delay(random_value, expected):
    policy = RetryPolicy(
        max_retries=3, backoff="exponential", delay=10, jitter=True, random=lambda: random_value
    )
    assert policy.delay_for(3) == expected


def test_jitter_never_shortens_below_half_over_many_draws():
    policy = RetryPolicy(
        max_retries=8, backoff="exponential", delay=7, backoff_max=500, jitter=True
    )
    for retry in range(1, 9):
        base = policy.base_delay(retry)
        for _ in range(200):
            assert base / 2 <= policy.delay_for(retry) <= base


def test_decide_retries_until_max_retries_then_gives_up():
    policy = RetryPolicy(max_retries=2, backoff="linear", delay=5)
    decisions = [policy.decide(attempt) for attempt in (1, 2, 3)]
    assert [(d.retry, d.countdown) for d in decisions] == [(True, 5), (True, 10), (False, 0)]
    assert {d.max_attempts for d in decisions} == {3}


def test_zero_max_retries_never_retries():
    assert RetryPolicy(max_retries=0).decide(1).retry is False


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": -1}, {"delay": -1}, {"backoff_max": -5}, {"backoff": "quadratic"}],
)
def test_invalid_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_base_delay_is_one_based():
    with pytest.raises(ValueError):
        RetryPolicy().base_delay(0)


class Timeout(ConnectionError):
    """A subclass, as requests.exceptions.Timeout is one of OSError's family."""


Timeout.__module__ = "requests.exceptions"


def test_exception_names_cover_the_class_and_its_bases_bare_and_dotted():
    from orchestrator.policies.retry import exception_names

    names = exception_names(Timeout)
    assert names[:4] == (
        "requests.exceptions.Timeout",
        "Timeout",
        "builtins.ConnectionError",
        "ConnectionError",
    )
    assert "OSError" in names and "Exception" in names and "BaseException" in names


@pytest.mark.parametrize(
    ("retry_on", "never_retry_on", "error", "decision"),
    [
        ((), (), ValueError, "retry"),
        (
            (),
            ("ValueError",),
            ValueError,
            "not retried: ValueError matches never_retry_on (ValueError)",
        ),
        (("ConnectionError",), (), Timeout, "retry"),  # a subclass matches its base's rule
        (("requests.exceptions.Timeout",), (), Timeout, "retry"),
        (("ConnectionError",), (), ValueError, "not retried: ValueError is not in retry_on"),
        (
            ("OSError",),
            ("Timeout",),
            Timeout,
            "not retried: Timeout matches never_retry_on (Timeout)",
        ),
        (("Exception",), ("builtins.KeyError",), LookupError, "retry"),
    ],
)
def test_exception_rules_decide_before_the_attempt_count(retry_on, never_retry_on, error, decision):
    from orchestrator.policies.retry import exception_names

    policy = RetryPolicy(max_retries=3, delay=1, retry_on=retry_on, never_retry_on=never_retry_on)
    outcome = policy.decide(1, exception_names(error))
    assert (outcome.reason or "retry") == decision
    assert outcome.retry is (decision == "retry")


def test_a_retryable_error_still_stops_at_max_retries():
    from orchestrator.policies.retry import exception_names

    policy = RetryPolicy(max_retries=1, delay=1, retry_on=("ValueError",))
    assert policy.decide(2, exception_names(ValueError)).retry is False
    assert policy.decide(2, exception_names(ValueError)).reason == ""
