import datetime as dt
from collections.abc import Iterator

import pytest

from orchestrator.notifications.events import Alert

# The worker fixtures of the integration tests, for test_integration.py.
from tests.integration.conftest import broker_url, real_database, start_worker  # noqa: F401
from tests.support.fake_slack import FakeSlack
from tests.support.smtp import SMTPServer

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
RUN_URL = "http://testserver/admin/orchestrator/taskrun/42/change/"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    server = FakeSlack()
    yield server
    server.close()


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer()
    yield server
    server.close()


@pytest.fixture
def slack_settings(settings, fake_slack: FakeSlack) -> FakeSlack:
    """ORCHESTRATOR settings pointing the bot at the fake Slack."""
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "SLACK_API_URL": fake_slack.api_url,
        "SLACK_BOT_TOKEN": fake_slack.token,
    }
    return fake_slack


def failure_alert(**changes) -> Alert:
    values = {
        "event": "failure",
        "task_name": "nightly-billing",
        "task_id": 7,
        "definition": "Send invoices",
        "attempt": 4,
        "max_attempts": 4,
        "duration": 12.34,
        "queue": "billing",
        "error_type": "ConnectionError",
        "error_message": "db <down> & `x`",
        "started_at": T0,
        "run_id": 42,
        "run_url": RUN_URL,
        "suppressed_count": 3,
    }
    values.update(changes)
    return Alert(**values)
