import pytest

from orchestrator.policies.priority import supports_priority, to_broker_priority, transport_of


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6379/0", "redis"),
        ("rediss://h:6380/1", "rediss"),
        ("amqp://guest:guest@localhost//", "amqp"),
        ("pyamqp://localhost", "pyamqp"),
        ("sentinel://h:26379;sentinel://h2:26379", "sentinel"),
        ("filesystem://", "filesystem"),
        ("sqla+postgresql://x", "sqla"),
        (None, "amqp"),
        ("", "amqp"),
    ],
)
def test_transport_is_read_from_the_broker_url(url, transport):
    assert transport_of(url) == transport


def test_redis_serves_zero_first_so_urgent_becomes_zero():
    assert [to_broker_priority(p, "redis") for p in (0, 5, 9)] == [9, 4, 0]


def test_rabbitmq_serves_higher_first_so_priorities_pass_through():
    assert [to_broker_priority(p, "amqp") for p in (0, 5, 9)] == [0, 5, 9]


def test_no_priority_keeps_the_broker_default():
    assert to_broker_priority(None, "redis") is None


def test_out_of_range_priority_is_refused():
    with pytest.raises(ValueError):
        to_broker_priority(10, "redis")


def test_filesystem_transport_has_no_priorities():
    assert not supports_priority("filesystem")
    assert supports_priority("redis") and supports_priority("amqp")
