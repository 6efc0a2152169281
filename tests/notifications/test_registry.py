import pytest
from django.core.exceptions import ValidationError

from orchestrator.models import NotificationChannel
from orchestrator.notifications.email import EmailChannel
from orchestrator.notifications.registry import (
    UnknownChannelKind,
    channel_class,
    get_channel,
    kind_choices,
)
from orchestrator.notifications.slack import SlackChannel
from tests.utils import make_channel


def test_kinds_map_to_channel_classes():
    assert channel_class("slack") is SlackChannel
    assert channel_class("email") is EmailChannel
    assert get_channel("email", " a@example.com ").target == "a@example.com"


def test_unknown_kinds_say_which_exist():
    with pytest.raises(UnknownChannelKind, match="known kinds: slack, email"):
        channel_class("pager")


def test_model_choices_follow_the_registry(settings):
    field = NotificationChannel._meta.get_field("kind")
    assert list(field.choices) == kind_choices() == [("slack", "Slack"), ("email", "Email")]
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "CHANNEL_KINDS": {"test": "orchestrator.notifications.testing.TestChannel"},
    }
    assert kind_choices()[-1] == ("test", "Test (in-memory outbox)")
    assert [kind for kind, _ in field.choices] == ["slack", "email", "test"]


def test_a_kind_that_cannot_be_imported_is_listed_by_its_name(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "CHANNEL_KINDS": {"teams": "x.Teams"}}
    assert ("teams", "teams") in kind_choices()
    with pytest.raises(ImportError):
        channel_class("teams")


@pytest.mark.django_db
def test_channel_validation_reports_the_right_field():
    with pytest.raises(ValidationError) as info:
        make_channel(kind="slack", target="not a channel")
    assert set(info.value.message_dict) == {"target"}
    with pytest.raises(ValidationError) as info:
        make_channel(events=["failure", "explosion"])
    assert info.value.message_dict["events"] == [
        "Unknown event(s) explosion; choose among: retry, failure, recovery, report, paused, "
        "missed, scheduler."
    ]
    with pytest.raises(ValidationError) as info:
        make_channel(events="failure")
    assert "events" in info.value.message_dict
    with pytest.raises(ValidationError) as info:
        make_channel(kind="pager")
    assert "kind" in info.value.message_dict
