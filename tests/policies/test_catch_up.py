import pytest

from orchestrator.policies.catch_up import ONE_RUN, CatchUp, CatchUpPolicy

TICKS = ["t1", "t2", "t3", "t4", "t5"]


@pytest.mark.parametrize(
    ("kind", "limit", "due", "sent"),
    [
        # One due tick is the normal case: every policy sends it.
        ("skip", 10, ["t1"], ["t1"]),
        ("once", 10, ["t1"], ["t1"]),
        ("all", 10, ["t1"], ["t1"]),
        # Nothing due, nothing sent.
        ("skip", 10, [], []),
        ("once", 10, [], []),
        ("all", 10, [], []),
        # Several due at once: the policy decides.
        ("skip", 10, TICKS, []),
        ("once", 10, TICKS, ["t5"]),
        ("all", 10, TICKS, TICKS),
        ("all", 3, TICKS, ["t3", "t4", "t5"]),
        ("all", 1, TICKS, ["t5"]),
        ("all", 5, TICKS, TICKS),
        ("skip", 1, ["t1", "t2"], []),
        ("once", 1, ["t1", "t2"], ["t2"]),
        ("all", 2, ["t1", "t2"], ["t1", "t2"]),
    ],
)
def test_each_policy_sends_exactly_these_ticks(kind, limit, due, sent):
    assert CatchUpPolicy(CatchUp(kind), limit).select(due) == sent


@pytest.mark.parametrize(
    ("kind", "limit", "keep"),
    [("skip", 10, 1), ("once", 10, 1), ("all", 10, 10), ("all", 1, 1), ("all", 1000, 1000)],
)
def test_the_scheduler_looks_at_as_many_recent_ticks_as_the_policy_can_send(kind, limit, keep):
    assert CatchUpPolicy(CatchUp(kind), limit).keep == keep


def test_the_default_is_once_with_a_limit_of_ten():
    assert CatchUpPolicy() == CatchUpPolicy(CatchUp.ONCE, 10)


def test_entries_that_are_not_scheduled_tasks_run_once_like_django_celery_beat():
    assert ONE_RUN.select(TICKS) == ["t5"]


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        CatchUpPolicy(CatchUp.ALL, 0)
