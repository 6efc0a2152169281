import pytest

from orchestrator import callables
from tests import sample_tasks

ALLOWED = ("tests.sample_tasks",)


def test_an_allowed_function_resolves():
    assert callables.resolve("tests.sample_tasks.add", ALLOWED) is sample_tasks.add


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("os.system", "not allowed"),
        ("builtins.eval", "not allowed"),
        ("tests.sample_tasksx.add", "not allowed"),  # a prefix must end at a module boundary
        ("tests.sample_tasks..add", "not a dotted import path"),
        (".sample_tasks.add", "not a dotted import path"),
        ("tests.sample_tasks.", "not a dotted import path"),
        ("add", "not a dotted import path"),
        ("tests.sample_tasks.__builtins__", "private or special"),
        ("tests.sample_tasks.system", "defined in 'posix'"),  # a re-exported os.system
        ("tests.sample_tasks.os", "not callable"),
        ("tests.sample_tasks.not_callable", "not callable"),
        ("tests.sample_tasks.missing", "has no attribute 'missing'"),
        ("tests.sample_tasks.sub.fn", "cannot be imported"),
        ("tests.sample_tasks.add; import os", "not a dotted import path"),
    ],
)
def test_paths_outside_the_allow_list_or_broken_are_refused(path, message):
    with pytest.raises(callables.CallableError) as caught:
        callables.resolve(path, ALLOWED)
    assert message in str(caught.value)


def test_attribute_chains_are_not_followed():
    # os.path.join re-exported under an allowed prefix: "tests.sample_tasks.os" is a module,
    # and "tests.sample_tasks.os.path.join" would need importing a module that doesn't exist.
    with pytest.raises(callables.CallableError):
        callables.resolve("tests.sample_tasks.os.path.join", ALLOWED)


def test_an_empty_allow_list_allows_nothing():
    with pytest.raises(callables.NotAllowedError, match="ALLOWED_TASK_MODULES"):
        callables.resolve("tests.sample_tasks.add", ())


def test_keyword_arguments_are_checked_against_the_signature():
    callables.check_kwargs(sample_tasks.add, {"a": 1})
    callables.check_kwargs(sample_tasks.echo, {"anything": 1})
    with pytest.raises(callables.CallableError, match="Missing required argument"):
        callables.check_kwargs(sample_tasks.add, {"b": 1})
    with pytest.raises(callables.CallableError, match="Unknown argument"):
        callables.check_kwargs(sample_tasks.add, {"a": 1, "c": 2})


def test_positional_only_parameters_cannot_be_filled():
    def positional(a, /):
        return a

    with pytest.raises(callables.CallableError, match="positional-only"):
        callables.check_kwargs(positional, {})
