import pytest
from django.urls import reverse

from orchestrator.models import NotificationChannel, NotificationDelivery
from tests.support.fake_slack import WEBHOOK_PATH, Reply
from tests.utils import make_channel, make_scheduled_task

pytestmark = pytest.mark.django_db
SECRET = "s3cr3tW3bh00kT0k3n"
WEBHOOK = f"https://hooks.slack.com/services/T000/B000/{SECRET}"


def channel_form(**changes):
    data = {
        "name": "ops",
        "kind": "slack",
        "target": WEBHOOK,
        "events": ["failure", "recovery"],
        "enabled": "on",
        "cooldown": "900",
        "alert_after_failures": "1",
    }
    data.update(changes)
    return data


def test_the_channel_list_masks_webhook_urls(admin_client):
    make_channel("hook", kind="slack", target=WEBHOOK)
    make_channel("mail", kind="email", target="ops@example.com")
    page = admin_client.get(reverse("admin:orchestrator_notificationchannel_changelist"))
    html = page.content.decode()
    assert page.status_code == 200
    assert SECRET not in html
    assert "https://hooks.slack.com/…0k3n" in html
    assert "ops@example.com" in html


def test_the_change_form_shows_the_masked_url_and_keeps_the_secret_when_untouched(admin_client):
    channel = make_channel("hook", kind="slack", target=WEBHOOK)
    url = reverse("admin:orchestrator_notificationchannel_change", args=[channel.pk])
    page = admin_client.get(url)
    assert SECRET not in page.content.decode()
    response = admin_client.post(
        url, channel_form(name="hook", target="https://hooks.slack.com/…0k3n", cooldown="60")
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    channel.refresh_from_db()
    assert channel.target == WEBHOOK
    assert channel.cooldown == 60


def test_a_new_url_replaces_the_stored_one(admin_client):
    channel = make_channel("hook", kind="slack", target=WEBHOOK)
    url = reverse("admin:orchestrator_notificationchannel_change", args=[channel.pk])
    new = "https://hooks.slack.com/services/T1/B1/another"
    admin_client.post(url, channel_form(name="hook", target=new))
    channel.refresh_from_db()
    assert channel.target == new


def test_adding_a_channel_validates_its_target_for_its_kind(admin_client):
    url = reverse("admin:orchestrator_notificationchannel_add")
    response = admin_client.post(url, channel_form(kind="email", target="ops@example.com, nope"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "Not a valid email address: nope" in errors["target"][0]
    response = admin_client.post(url, channel_form(events=["failure", "report"]))
    assert response.status_code == 302
    assert NotificationChannel.objects.get().events == ["failure", "report"]


def test_the_kind_choices_come_from_the_registry(admin_client):
    page = admin_client.get(reverse("admin:orchestrator_notificationchannel_add"))
    html = page.content.decode()
    assert '<option value="slack">Slack</option>' in html
    assert '<option value="email">Email</option>' in html


def test_send_test_notification_is_queued_and_its_result_lands_in_the_delivery_log(
    admin_client, fake_slack, deliver_now, django_capture_on_commit_callbacks
):
    good = make_channel("good", kind="slack", target=fake_slack.webhook_url())
    bad = make_channel(
        "bad", kind="slack", target=fake_slack.webhook_url("/services/T/B/deadhook123")
    )
    fake_slack.script("/services/T/B/deadhook123", Reply(404, "no_service"))
    changelist = reverse("admin:orchestrator_notificationchannel_changelist")
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(
            changelist,
            {"action": "send_test_notification", "_selected_action": [good.pk, bad.pk]},
            follow=True,
        )
    # The request only queued the sends: nothing reached Slack while it ran.
    assert fake_slack.received() == []
    messages = [str(m) for m in response.context["messages"]]
    log = reverse("admin:orchestrator_notificationdelivery_changelist")
    assert (
        f'good: test notification queued; its result will be in the <a href="{log}?'
        f'channel__id__exact={good.pk}&amp;event__exact=test">delivery log</a>.' in messages
    )
    assert {(d.channel.name, d.event, d.status) for d in NotificationDelivery.objects.all()} == {
        ("good", "test", "pending"),
        ("bad", "test", "pending"),
    }
    for callback in callbacks:  # what the worker does once the transaction commits
        callback()
    assert len(fake_slack.delivered(WEBHOOK_PATH)) == 1
    assert len(fake_slack.received("/services/T/B/deadhook123")) == 1  # one try, no retries
    rows = {d.channel.name: d for d in NotificationDelivery.objects.all()}
    assert (rows["good"].status, rows["good"].error) == ("sent", "")
    assert rows["bad"].status == "failed"
    assert rows["bad"].error == "Slack webhook answered HTTP 404 no_service (webhook not found)"
    bad.refresh_from_db()
    assert bad.last_error.startswith("Slack webhook answered HTTP 404")
    page = admin_client.get(f"{log}?channel__id__exact={bad.pk}&event__exact=test")
    assert page.status_code == 200
    assert "Slack webhook answered HTTP 404" in page.content.decode()


def test_the_delivery_log_is_read_only(admin_client):
    channel = make_channel()
    task = make_scheduled_task()
    delivery = NotificationDelivery.objects.create(
        channel=channel,
        scheduled_task=task,
        event="failure",
        status="suppressed",
        suppressed_reason="cooldown of 900s",
    )
    listing = admin_client.get(reverse("admin:orchestrator_notificationdelivery_changelist"))
    assert listing.status_code == 200
    assert "Suppressed: cooldown of 900s" in listing.content.decode()
    add = admin_client.get(reverse("admin:orchestrator_notificationdelivery_add"))
    assert add.status_code == 403
    change_url = reverse("admin:orchestrator_notificationdelivery_change", args=[delivery.pk])
    assert admin_client.get(change_url).status_code == 200
    assert admin_client.post(change_url, {"status": "sent"}).status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == "suppressed"
