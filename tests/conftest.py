import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import freezegun
import pytest

# The test project's Celery app becomes the current app, as a project's __init__ would make it.
import tests.celery_app  # noqa: F401

# pytest times each test with the functions of _pytest.timing; frozen there, a test frozen by
# freezegun reported a duration of 1.8e9 s in the "slowest durations" list CI prints.
freezegun.configure(extend_ignore_list=["_pytest.timing"])

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARTIFACTS.mkdir(exist_ok=True)


# Tests that prove what one broker does (Redis's visibility timeout, RabbitMQ dropping a lost
# connection's messages back in the queue) run in the CI leg of that broker and are deselected,
# not skipped, in the others.
BROKER_MARKERS = {
    "redis": ("redis://", "rediss://"),
    "rabbitmq": ("amqp://", "amqps://", "pyamqp://"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from django.conf import settings

    broker = settings.CELERY_BROKER_URL or ""
    keep, other_broker = [], []
    for item in items:
        needs = [name for name in BROKER_MARKERS if item.get_closest_marker(name)]
        if any(not broker.startswith(BROKER_MARKERS[name]) for name in needs):
            other_broker.append(item)
        else:
            keep.append(item)
    if other_broker:
        config.hook.pytest_deselected(items=other_broker)
        items[:] = keep


def services_required() -> bool:
    """In CI the integration tests must run: an unreachable service fails them, never skips."""
    return os.environ.get("ORCHESTRATOR_REQUIRE_SERVICES", "") not in ("", "0", "false")


@pytest.fixture
def scratch_dir(tmp_path: Path) -> Path:
    """A folder that worker subprocesses can read and write too.

    pytest's tmp_path is already unique per test and per session, and subprocesses on this
    machine can use it like the test does.
    """
    return tmp_path


@pytest.fixture
def superuser(db: None) -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_superuser("root", password="pw")


@pytest.fixture
def admin_web(superuser: Any) -> Any:
    """A Django test client logged in as a superuser."""
    from django.test import Client

    client = Client()
    client.force_login(superuser)
    return client


@pytest.fixture
def api(superuser: Any) -> Any:
    """A DRF test client authenticated as a superuser."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(superuser)
    return client


@pytest.fixture
def fake_slack(settings: Any) -> Iterator[Any]:
    """The Slack look-alike HTTP server on localhost (tests/support/fake_slack.py), listed in
    ``ORCHESTRATOR["WEBHOOK_ALLOWED_HOSTS"]`` for the test."""
    from tests.support.fake_slack import FakeSlack

    server = FakeSlack()
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "WEBHOOK_ALLOWED_HOSTS": [
            *settings.ORCHESTRATOR.get("WEBHOOK_ALLOWED_HOSTS", []),
            server.allowed_host,
        ],
    }
    yield server
    server.close()


@pytest.fixture
def smtp_server() -> Iterator[Any]:
    """A real SMTP server on localhost (aiosmtpd), recording what it receives."""
    from tests.support.smtp import SMTPServer

    server = SMTPServer()
    yield server
    server.close()


@pytest.fixture
def slack_settings(settings: Any, fake_slack: Any) -> Any:
    """ORCHESTRATOR settings pointing the bot at the fake Slack."""
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "SLACK_API_URL": fake_slack.api_url,
        "SLACK_BOT_TOKEN": fake_slack.token,
    }
    return fake_slack


@pytest.fixture
def deliver_now(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Queued notification deliveries run in this process as their Celery task would (once the
    transaction commits), without a broker; returns the ``args`` of each message."""
    from orchestrator.notifications.delivery import deliver
    from orchestrator.notifications.tasks import deliver_notification

    sent: list[Any] = []

    def apply_async(args: Any, **options: Any) -> None:
        sent.append(args)
        deliver(*args, sleep=lambda seconds: None)

    monkeypatch.setattr(deliver_notification, "apply_async", apply_async)
    return sent
