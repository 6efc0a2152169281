"""Outbound requests: a webhook target reaches only allowed hosts, at checked addresses.

The servers here are real (threaded ``http.server`` on loopback addresses). The ones a request
must never reach record everything, and every test that refuses a target asserts they received
nothing.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from orchestrator.models import NotificationChannel, NotificationDelivery
from orchestrator.notifications import delivery as service
from orchestrator.notifications import outbound
from orchestrator.notifications.events import connection_test_alert
from orchestrator.notifications.outbound import OutboundRefused, check_url, parse_allowed_host
from tests.support.fake_slack import API_PATH, WEBHOOK_PATH, FakeSlack, Reply
from tests.utils import make_channel, make_scheduled_task

pytestmark = pytest.mark.django_db


class Canary:
    """A real HTTP server that records every request; a refused target must leave it empty."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[str] = []
        canary = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _record(self) -> None:
                canary.requests.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = _record

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def host_port(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def url(self, path: str = WEBHOOK_PATH) -> str:
        return f"http://{self.host_port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    server = Canary("127.0.0.1")
    yield server
    server.close()


@pytest.fixture
def second_loopback() -> Iterator[Canary]:
    try:
        server = Canary("127.0.0.2")
    except OSError:
        pytest.skip("this machine has no 127.0.0.2")
    yield server
    server.close()


def legacy_channel(name: str, target: str, kind: str = "slack") -> NotificationChannel:
    """A channel written straight to the database, as one saved before the rules was."""
    return NotificationChannel.objects.create(
        name=name, kind=kind, target=target, events=["failure", "retry"]
    )


def send_once(channel: NotificationChannel) -> NotificationDelivery:
    delivery = NotificationDelivery.objects.create(
        channel=channel, event="failure", status=NotificationDelivery.Status.PENDING
    )
    service.deliver(delivery.pk, connection_test_alert().to_dict(), sleep=lambda s: None)
    delivery.refresh_from_db()
    return delivery


# --- the rules, at save time -------------------------------------------------------------------

REFUSED = [
    pytest.param("https://example.com/services/T/B/x", "not in", id="unlisted-host"),
    pytest.param("http://hooks.slack.com/services/T/B/x", "https", id="plain-http-to-slack"),
    pytest.param("https://10.0.0.7/services/T/B/x", "not in", id="private-address"),
    pytest.param("https://169.254.169.254/latest/meta-data/x", "not in", id="metadata-address"),
    pytest.param("https://[::1]/services/T/B/x", "not in", id="ipv6-loopback"),
    pytest.param("https://0x7f000001/services/T/B/x", "not in", id="hex-loopback"),
    pytest.param("https://u:p@hooks.slack.com/services/T/B/x", "user name", id="user-info"),
    pytest.param("https://hooks.slack.com:99999/services/T/B/x", "port", id="port-too-big"),
    pytest.param("https://hooks.slack.com:abc/services/T/B/x", "port", id="port-not-a-number"),
    pytest.param("https://hooks.slack.com.evil.example/services/T/B/x", "not in", id="suffix"),
    pytest.param("https://hooks.slack.com:8443/services/T/B/x", "not in", id="other-port"),
]


@pytest.mark.parametrize(("target", "says"), REFUSED)
def test_validation_refuses_targets_outside_the_allowed_hosts(target: str, says: str) -> None:
    channel = NotificationChannel(name="hook", kind="slack", target=target)
    with pytest.raises(ValidationError) as raised:
        channel.full_clean()
    (message,) = raised.value.message_dict["target"]
    assert says in message
    assert "/services/T/B/x" not in message  # the path of a webhook is its secret


def test_a_loopback_server_is_refused_unless_listed_with_its_port(
    settings: Any, canary: Canary
) -> None:
    channel = NotificationChannel(name="hook", kind="slack", target=canary.url())
    with pytest.raises(ValidationError) as raised:
        channel.full_clean()
    assert "WEBHOOK_ALLOWED_HOSTS" in raised.value.message_dict["target"][0]
    host = canary.host_port.split(":")[0]
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "WEBHOOK_ALLOWED_HOSTS": [host]}
    with pytest.raises(ValidationError) as raised:  # listed, but not with its port
        channel.full_clean()
    assert "WEBHOOK_ALLOWED_HOSTS" in raised.value.message_dict["target"][0]
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "WEBHOOK_ALLOWED_HOSTS": [canary.host_port],
    }
    channel.full_clean()
    assert canary.requests == []  # validation never connects


def test_the_admin_and_the_api_share_the_rule(admin_web: Client, api: Any, canary: Canary) -> None:
    response = admin_web.post(
        reverse("admin:orchestrator_notificationchannel_add"),
        {
            "name": "hook",
            "kind": "slack",
            "target": canary.url(),
            "events": ["failure"],
            "enabled": "on",
            "cooldown": "900",
            "alert_after_failures": "1",
        },
    )
    assert response.status_code == 200
    assert "WEBHOOK_ALLOWED_HOSTS" in response.context["adminform"].form.errors["target"][0]
    answer = api.post(
        reverse("orchestrator:api-channel-list"),
        {"name": "hook", "kind": "slack", "target": canary.url(), "events": ["failure"]},
        format="json",
    )
    assert answer.status_code == 400
    assert "WEBHOOK_ALLOWED_HOSTS" in answer.json()["target"][0]
    assert not NotificationChannel.objects.exists()
    assert canary.requests == []


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("hooks.slack.com", ("hooks.slack.com", None)),
        ("HOOKS.slack.com", ("hooks.slack.com", None)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
    ],
)
def test_allowed_host_entries(entry: str, parsed: tuple[str, int | None]) -> None:
    allowed = parse_allowed_host(entry)
    assert (allowed.host, allowed.port) == parsed


# --- the rules, at send time ------------------------------------------------------------------


def test_a_legacy_row_pointing_at_an_unlisted_loopback_port_sends_nothing(
    canary: Canary, second_loopback: Canary
) -> None:
    for name, server in (("first", canary), ("second", second_loopback)):
        delivery = send_once(legacy_channel(name, server.url()))
        assert delivery.status == "failed"
        assert "Slack request refused" in delivery.error
        assert "WEBHOOK_ALLOWED_HOSTS" in delivery.error
    assert canary.requests == []
    assert second_loopback.requests == []
    # A permanent error: the channels say why.
    assert all("refused" in c.last_error for c in NotificationChannel.objects.all())


def test_a_listed_port_on_one_loopback_address_does_not_open_another(
    settings: Any, canary: Canary, second_loopback: Canary
) -> None:
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "WEBHOOK_ALLOWED_HOSTS": ["hooks.slack.com", canary.host_port],
    }
    delivery = send_once(legacy_channel("second", second_loopback.url()))
    assert delivery.status == "failed"
    assert second_loopback.requests == []
    delivery = send_once(legacy_channel("first", canary.url()))
    assert delivery.status == "sent"
    assert canary.requests == [f"POST {WEBHOOK_PATH}"]


def test_the_test_notification_of_a_refused_target_sends_nothing(
    admin_web: Client, canary: Canary, deliver_now: list[Any], django_capture_on_commit_callbacks
) -> None:
    channel = legacy_channel("legacy", canary.url())
    with django_capture_on_commit_callbacks(execute=True):
        admin_web.post(
            reverse("admin:orchestrator_notificationchannel_changelist"),
            {"action": "send_test_notification", "_selected_action": [channel.pk]},
        )
    delivery = NotificationDelivery.objects.get(channel=channel)
    assert (delivery.event, delivery.status) == ("test", "failed")
    assert "refused" in delivery.error
    assert canary.requests == []


def test_redirects_are_never_followed(
    fake_slack: FakeSlack, slack_settings: FakeSlack, canary: Canary
) -> None:
    fake_slack.script(WEBHOOK_PATH, Reply(302, "", {"Location": canary.url("/stolen")}))
    fake_slack.script(API_PATH, Reply(307, "", {"Location": canary.url("/api/stolen")}))
    webhook = send_once(make_channel("webhook", kind="slack", target=fake_slack.webhook_url()))
    bot = send_once(make_channel("bot", kind="slack", target="#ops"))
    assert webhook.status == "failed"
    assert webhook.attempts == 1  # permanent: a redirect stays a redirect
    assert webhook.error == "Slack webhook answered HTTP 302 (a redirect, never followed)"
    assert bot.status == "failed"
    assert bot.error == "Slack chat.postMessage failed: HTTP 307"
    assert [r.status for r in fake_slack.received()] == [302, 307]
    assert canary.requests == []


@pytest.mark.parametrize("address", ["10.1.2.3", "127.0.0.1", "169.254.169.254", "::1", "fc00::1"])
def test_an_allowed_name_resolving_to_a_non_public_address_is_refused_when_sending(
    monkeypatch: pytest.MonkeyPatch, canary: Canary, address: str
) -> None:
    # hooks.slack.com, as a poisoned resolver or a rebinding attacker would answer for it.
    def fake_getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        assert host == "hooks.slack.com"
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(outbound.socket, "getaddrinfo", fake_getaddrinfo)
    connects: list[Any] = []
    monkeypatch.setattr(outbound.socket, "socket", lambda *a: connects.append(a))
    delivery = send_once(
        make_channel("hook", kind="slack", target="https://hooks.slack.com/services/T/B/x")
    )
    assert delivery.status == "failed"
    assert f"non-public address ({address})" in delivery.error
    assert connects == []
    assert canary.requests == []


def test_the_connection_goes_to_the_address_that_was_checked(
    monkeypatch: pytest.MonkeyPatch, settings: Any, fake_slack: FakeSlack
) -> None:
    # "localhost" answers the look-alike's address once, then (a DNS rebinding) another
    # loopback address with the same port: the request must reach the checked one.
    port = int(fake_slack.allowed_host.rsplit(":", 1)[1])
    try:
        elsewhere = Canary("127.0.0.2", port)
    except OSError:
        pytest.skip("127.0.0.2 is not available with that port here")
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "WEBHOOK_ALLOWED_HOSTS": [
            *settings.ORCHESTRATOR["WEBHOOK_ALLOWED_HOSTS"],
            f"localhost:{port}",
        ],
    }
    answers = iter(["127.0.0.1"])
    real = socket.getaddrinfo

    def rebinding(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "localhost":
            return real(next(answers, "127.0.0.2"), *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    try:
        delivery = send_once(
            make_channel("hook", kind="slack", target=f"http://localhost:{port}{WEBHOOK_PATH}")
        )
        assert delivery.status == "sent"
        assert len(fake_slack.delivered(WEBHOOK_PATH)) == 1
        assert elsewhere.requests == []
    finally:
        elsewhere.close()


def test_localhost_resolving_elsewhere_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        outbound.socket,
        "getaddrinfo",
        lambda host, port, *a, **k: [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port))
        ],
    )
    destination = outbound.Destination("http", "localhost", 8080, private_allowed=True)
    with pytest.raises(OutboundRefused, match="not loopback"):
        outbound.resolve_checked(destination)


def test_an_slack_api_url_that_breaks_the_rules_sends_nothing(
    settings: Any, canary: Canary
) -> None:
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "SLACK_API_URL": f"http://127.0.0.2:{canary.host_port.rsplit(':', 1)[1]}/api/",
        "SLACK_BOT_TOKEN": "xoxb-1-2-3",
    }
    delivery = send_once(make_channel("bot", kind="slack", target="#ops"))
    assert delivery.status == "failed"
    assert "SLACK_API_URL must use https://" in delivery.error
    assert canary.requests == []
    with pytest.raises(OutboundRefused):
        check_url(settings.ORCHESTRATOR["SLACK_API_URL"], from_settings=True)


WEBHOOK_GONE = "Slack webhook answered HTTP 404 no_service (webhook not found)"


# --- what is reported -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (
            Reply(404, "no_service"),
            "Slack webhook answered HTTP 404 no_service (webhook not found)",
        ),
        (Reply(403, "invalid_token"), "Slack webhook answered HTTP 403 invalid_token"),
        (Reply(400, "redis_version"), "Slack webhook answered HTTP 400"),
        (
            Reply(400, "<html>-ERR wrong number of arguments for 'post' command</html>"),
            "Slack webhook answered HTTP 400",
        ),
        (Reply(401, {"internal": "metadata-token-abc"}), "Slack webhook answered HTTP 401"),
    ],
)
def test_only_slacks_documented_error_codes_and_the_status_are_reported(
    fake_slack: FakeSlack, reply: Reply, error: str
) -> None:
    fake_slack.script(WEBHOOK_PATH, reply)
    channel = make_channel("hook", kind="slack", target=fake_slack.webhook_url())
    delivery = send_once(channel)
    assert delivery.error == error
    channel.refresh_from_db()
    assert channel.last_error == error


def test_an_api_answer_that_is_not_slacks_reports_only_its_status(
    slack_settings: FakeSlack,
) -> None:
    slack_settings.script(API_PATH, Reply(403, "<h1>internal: db password hunter2</h1>"))
    slack_settings.script(API_PATH, Reply(200, {"ok": False, "error": "the_server_speaks"}))
    channel = make_channel("bot", kind="slack", target="#ops")
    first = send_once(channel)
    assert "hunter2" not in first.error
    assert first.error == "Slack chat.postMessage failed: HTTP 403"
    NotificationChannel.objects.filter(pk=channel.pk).update(last_error="")
    second = send_once(channel)
    assert second.error == "Slack chat.postMessage failed: HTTP 200"


# --- masking, for every target validation accepted once -------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "https://hooks.slack.com:99999/services/T0/B0/s3cr3tpath1234",
        "https://hooks.slack.com:abc/services/T0/B0/s3cr3tpath1234",
        "https://[::1/services/T0/B0/s3cr3tpath1234",
        "http://u:s3cr3tpath1234@hooks.slack.com/services/x",
    ],
)
def test_a_legacy_row_with_an_unparsable_url_renders_masked_everywhere(
    admin_web: Client, api: Any, target: str
) -> None:
    channel = legacy_channel("legacy", target)
    task = make_scheduled_task("billing")
    task.notification_channels.set([channel])
    pages = {
        "channel list": admin_web.get(reverse("admin:orchestrator_notificationchannel_changelist")),
        "channel form": admin_web.get(
            reverse("admin:orchestrator_notificationchannel_change", args=[channel.pk])
        ),
        "channel history": admin_web.get(
            reverse("admin:orchestrator_notificationchannel_history", args=[channel.pk])
        ),
        "task form": admin_web.get(
            reverse("admin:orchestrator_scheduledtask_change", args=[task.pk])
        ),
        "dashboard task": admin_web.get(reverse("orchestrator:task-detail", args=[task.pk])),
        "api channels": api.get(reverse("orchestrator:api-channel-list")),
        "api channel": api.get(reverse("orchestrator:api-channel-detail", args=[channel.pk])),
    }
    for name, page in pages.items():
        assert page.status_code == 200, name
        assert "s3cr3tpath" not in page.content.decode(), name
    # And saving it again asks for a URL that parses, naming the field.
    with pytest.raises(ValidationError) as raised:
        channel.full_clean()
    assert "target" in raised.value.message_dict


def test_a_user_who_may_only_view_channels_sees_the_page_with_the_target_masked() -> None:
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_notificationchannel"))
    channel = make_channel(
        "hook", kind="slack", target="https://hooks.slack.com/services/T0/B0/s3cr3tpath1234"
    )
    client = Client()
    client.force_login(user)
    page = client.get(reverse("admin:orchestrator_notificationchannel_change", args=[channel.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "s3cr3tpath" not in html
    assert "https://hooks.slack.com/…1234" in html
    assert 'name="target"' not in html  # nothing to edit


def test_a_name_that_does_not_resolve_is_a_transient_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreachable_dns(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(outbound.socket, "getaddrinfo", unreachable_dns)
    channel = make_channel("hook", kind="slack", target="https://hooks.slack.com/services/T/B/x")
    delivery = send_once(channel)
    assert delivery.status == "failed"
    assert delivery.attempts > 1  # retried: the DNS may answer again
    assert delivery.error.startswith("Slack unreachable")
    channel.refresh_from_db()
    assert channel.last_error == ""  # not the channel's fault
