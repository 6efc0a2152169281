"""The channel contract: masking and secrets every kind gets, and one way to show a target."""

import pytest

from orchestrator.notifications.base import Channel
from orchestrator.notifications.redact import MASK
from orchestrator.notifications.registry import mask_target
from orchestrator.notifications.slack import SlackChannel


class Teams(Channel):
    kind = "teams"
    label = "Teams"


@pytest.fixture
def teams_kind(settings):
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "CHANNEL_KINDS": {"teams": f"{__name__}.Teams"},
    }


def test_a_kind_that_declares_nothing_still_gets_urls_masked_and_redacted(teams_kind):
    target = "https://example.com/webhook/s3cr3t-token"
    assert mask_target("teams", target) == "https://example.com/…oken"
    assert Teams(target).secrets() == [target]
    assert Teams("#general").secrets() == []


@pytest.mark.parametrize(
    ("kind", "target", "shown"),
    [
        ("slack", "https://hooks.slack.com/services/T/B/abcd1234", "https://hooks.slack.com/…1234"),
        ("slack", "#ops-alerts", "#ops-alerts"),
        ("email", "ops@example.com, oncall@example.com", "ops@example.com, oncall@example.com"),
        ("pager", "https://example.com/key/abcdefghijkl", MASK),  # unknown: nothing shown
    ],
)
def test_every_page_shows_a_target_as_its_kind_masks_it(kind, target, shown):
    assert mask_target(kind, target) == shown


def test_slack_lists_the_bot_token_and_a_webhook_url_with_its_path(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SLACK_BOT_TOKEN": "xoxb-1-2-abc"}
    url = "https://hooks.slack.com/services/T/B/abcd1234"
    assert SlackChannel(url).secrets() == ["xoxb-1-2-abc", url, "/services/T/B/abcd1234"]
    assert SlackChannel("#ops").secrets() == ["xoxb-1-2-abc"]
