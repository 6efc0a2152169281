import logging

import pytest
from django.core.checks import Error, Warning

from orchestrator import checks
from tests.utils import make_scheduled_task


def ids(messages) -> list[str]:
    return [message.id for message in messages]


def test_e001_django_celery_beat_missing(settings):
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_celery_beat"]
    messages = checks.check_installed_apps()
    assert ids(messages) == ["orchestrator.E001"]
    assert isinstance(messages[0], Error)
    assert "INSTALLED_APPS" in messages[0].hint


def test_e001_passes_when_installed():
    assert checks.check_installed_apps() == []


def test_e002_orchestrator_setting_not_a_dict(settings):
    settings.ORCHESTRATOR = ["tests"]
    assert ids(checks.check_settings()) == ["orchestrator.E002"]


def test_e002_unknown_keys_are_named(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "ALLOWED_MODULES": ["x"]}
    messages = checks.check_settings()
    assert ids(messages) == ["orchestrator.E002"]
    assert "ALLOWED_MODULES" in messages[0].msg


def test_e003_invalid_maintenance_schedule(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "MAINTENANCE_SCHEDULE": "every minute"}
    messages = checks.check_settings()
    assert ids(messages) == ["orchestrator.E003"]
    assert "MAINTENANCE_SCHEDULE" in messages[0].msg
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "MAINTENANCE_SCHEDULE": None}
    assert checks.check_settings() == []


def test_w001_empty_allow_list(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "ALLOWED_TASK_MODULES": []}
    messages = checks.check_settings()
    assert ids(messages) == ["orchestrator.W001"]
    assert isinstance(messages[0], Warning)


def test_settings_checks_pass_for_the_test_settings():
    assert checks.check_settings() == []


@pytest.fixture
def prioritised_task(db):
    return make_scheduled_task("urgent", priority=8)


def priority_ids(settings, transport: str, **celery) -> list[str]:
    from celery import current_app

    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": transport}
    saved = {key: current_app.conf[key] for key in celery}
    current_app.conf.update(celery)
    try:
        return ids(checks.check_priority_support(databases=["default"]))
    finally:
        current_app.conf.update(saved)


def test_priority_checks_are_quiet_without_prioritised_tasks(settings, db):
    make_scheduled_task("plain")
    assert priority_ids(settings, "filesystem") == []


def test_priority_checks_do_not_query_without_databases(settings, prioritised_task):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": "filesystem"}
    assert checks.check_priority_support() == []


def test_w002_prefetch_above_one(settings, prioritised_task):
    assert priority_ids(settings, "redis", worker_prefetch_multiplier=4) == ["orchestrator.W002"]


def test_w003_dispatch_task_not_acked_late(settings, prioritised_task, monkeypatch):
    monkeypatch.setattr(checks, "_dispatch_task_acks_late", lambda: False)
    assert priority_ids(settings, "redis", worker_prefetch_multiplier=1) == ["orchestrator.W003"]


def queue_priority_ids(settings, transport: str, max_priority: int | None) -> list[str]:
    from celery import current_app

    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": transport}
    saved = current_app.conf.task_queue_max_priority
    current_app.conf.task_queue_max_priority = max_priority
    try:
        return ids(checks.check_rabbitmq_queue_priority())
    finally:
        current_app.conf.task_queue_max_priority = saved


def test_w004_rabbitmq_without_max_priority_even_before_any_task_has_one(settings):
    # No database: an operator may set a priority later, when the queue can no longer change.
    assert queue_priority_ids(settings, "amqp", None) == ["orchestrator.W004"]
    assert queue_priority_ids(settings, "amqp", 10) == []
    assert queue_priority_ids(settings, "redis", None) == []


def test_w005_transport_without_priorities(settings, prioritised_task):
    assert priority_ids(settings, "filesystem") == ["orchestrator.W005"]


def test_redis_with_recommended_settings_passes(settings, prioritised_task):
    assert priority_ids(settings, "redis", worker_prefetch_multiplier=1) == []


def test_w006_bot_channel_without_token(settings, db):
    from tests.utils import make_channel

    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SLACK_BOT_TOKEN": ""}
    make_channel("hooks", kind="slack", target="https://hooks.slack.com/services/T0/B0/x")
    assert checks.check_slack_bot_token(databases=["default"]) == []
    make_channel("bot", kind="slack", target="#ops")
    messages = checks.check_slack_bot_token(databases=["default"])
    assert ids(messages) == ["orchestrator.W006"]
    assert "bot" in messages[0].msg
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SLACK_BOT_TOKEN": "xoxb-configured"}
    assert checks.check_slack_bot_token(databases=["default"]) == []


@pytest.mark.parametrize(
    "value",
    ["orchestrator.scheduler:Scheduler", "orchestrator.scheduler.Scheduler", "class", "subclass"],
)
def test_w007_quiet_with_orchestrators_scheduler(value):
    from celery import current_app

    from orchestrator.scheduler import Scheduler

    class Custom(Scheduler):
        pass

    value = {"class": Scheduler, "subclass": Custom}.get(value, value)
    saved = current_app.conf.beat_scheduler
    current_app.conf.beat_scheduler = value
    try:
        assert checks.check_beat_scheduler() == []
    finally:
        current_app.conf.beat_scheduler = saved


@pytest.mark.parametrize(
    "value",
    ["django_celery_beat.schedulers:DatabaseScheduler", "celery.beat:PersistentScheduler"],
)
def test_w007_another_beat_scheduler_names_what_is_lost(value):
    from celery import current_app

    saved = current_app.conf.beat_scheduler
    current_app.conf.beat_scheduler = value
    try:
        messages = checks.check_beat_scheduler()
    finally:
        current_app.conf.beat_scheduler = saved
    assert ids(messages) == ["orchestrator.W007"]
    assert isinstance(messages[0], Warning)
    assert value in messages[0].msg
    assert "catch-up" in messages[0].msg and "heartbeat" in messages[0].msg
    assert "orchestrator.scheduler:Scheduler" in messages[0].hint


@pytest.mark.django_db
def test_w008_a_task_outlasting_redis_visibility_timeout(settings) -> None:
    from orchestrator.checks import check_visibility_timeout
    from tests.utils import make_scheduled_task

    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": "redis"}
    make_scheduled_task("short", time_limit=600)
    assert check_visibility_timeout(databases=["default"]) == []
    make_scheduled_task("long", time_limit=7200)
    (warning,) = check_visibility_timeout(databases=["default"])
    assert warning.id == "orchestrator.W008"
    assert "long (7200 s)" in warning.msg and "(3600 s)" in warning.msg
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "BROKER_TRANSPORT": "amqp"}
    assert check_visibility_timeout(databases=["default"]) == []


def test_e010_slack_api_url_over_plain_http_to_an_unlisted_host(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SLACK_API_URL": "http://slack.example/api/"}
    messages = checks.check_settings()
    assert ids(messages) == ["orchestrator.E010"]
    assert "https" in messages[0].msg
    assert "WEBHOOK_ALLOWED_HOSTS" in messages[0].hint


@pytest.mark.parametrize(
    "url", ["https://slack.com:99999/api/", "ftp://slack.com/api/", "https://u:p@slack.com/api/"]
)
def test_e010_a_malformed_slack_api_url(settings, url):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SLACK_API_URL": url}
    assert ids(checks.check_settings()) == ["orchestrator.E010"]


def test_e010_passes_for_slack_and_for_a_listed_loopback_look_alike(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "SLACK_API_URL": "https://slack.com/api/"}
    assert checks.check_settings() == []
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "SLACK_API_URL": "http://127.0.0.1:8099/api/",
        "WEBHOOK_ALLOWED_HOSTS": ["hooks.slack.com", "127.0.0.1:8099"],
    }
    assert checks.check_settings() == []


@pytest.mark.parametrize(
    "entries",
    [
        ["https://hooks.slack.com"],
        ["hooks.slack.com/services"],
        ["hooks.slack.com:http"],
        ["127.0.0.1:99999"],
        [""],
        [42],
        "hooks.slack.com hooks.example.com",
        {"hooks.slack.com": True},
    ],
)
def test_e011_an_allowed_host_entry_that_allows_nothing(settings, entries):
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "SLACK_API_URL": "https://slack.com/api/",
        "WEBHOOK_ALLOWED_HOSTS": entries,
    }
    messages = checks.check_settings()
    assert ids(messages) == ["orchestrator.E011"]
    assert "WEBHOOK_ALLOWED_HOSTS" in messages[0].msg


def test_w010_channels_that_validation_now_refuses_are_named(settings, db):
    from orchestrator.models import NotificationChannel

    NotificationChannel.objects.create(
        name="old-hook", kind="slack", target="https://hooks.example.com/services/T0/B0/abcd"
    )
    NotificationChannel.objects.create(
        name="bad-port", kind="slack", target="https://hooks.slack.com:99999/services/T0/B0/x"
    )
    NotificationChannel.objects.create(
        name="fine", kind="slack", target="https://hooks.slack.com/services/T0/B0/abcd"
    )
    assert checks.check_channel_targets() == []  # no database asked for: no query
    messages = checks.check_channel_targets(databases=["default"])
    assert ids(messages) == ["orchestrator.W010"]
    assert "old-hook" in messages[0].msg and "bad-port" in messages[0].msg
    assert "fine" not in messages[0].msg
    assert "abcd" not in messages[0].msg  # names, never targets
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "WEBHOOK_ALLOWED_HOSTS": ["hooks.slack.com", "hooks.example.com"],
    }
    (message,) = checks.check_channel_targets(databases=["default"])
    assert "old-hook" not in message.msg


@pytest.mark.parametrize("value", [0, -5, 36501, 7.5, "90", True])
def test_e020_invalid_run_retention(settings, value):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "RUN_RETENTION_DAYS": value}
    messages = checks.check_retention()
    assert ids(messages) == ["orchestrator.E020"]
    assert "RUN_RETENTION_DAYS" in messages[0].msg
    assert "None" in messages[0].hint


@pytest.mark.parametrize("value", [0, "30 days"])
def test_e021_invalid_delivery_retention(settings, value):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "DELIVERY_RETENTION_DAYS": value}
    messages = checks.check_retention()
    assert ids(messages) == ["orchestrator.E021"]
    assert "DELIVERY_RETENTION_DAYS" in messages[0].msg


@pytest.mark.parametrize("deliveries", [None, 91])
def test_w020_deliveries_kept_longer_than_runs(settings, deliveries):
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "RUN_RETENTION_DAYS": 90,
        "DELIVERY_RETENTION_DAYS": deliveries,
    }
    messages = checks.check_retention()
    assert ids(messages) == ["orchestrator.W020"]
    assert isinstance(messages[0], Warning)


@pytest.mark.parametrize("runs, deliveries", [(90, 30), (30, 30), (None, None), (None, 7)])
def test_retention_checks_pass_for_consistent_settings(settings, runs, deliveries):
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "RUN_RETENTION_DAYS": runs,
        "DELIVERY_RETENTION_DAYS": deliveries,
    }
    assert checks.check_retention() == []


@pytest.mark.parametrize("level", ["INFO", "warning", 10, logging.ERROR])
def test_run_log_checks_accept_level_names_and_numbers(settings, level):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "RUN_LOG_LEVEL": level}
    assert checks.check_run_log() == []


def test_e030_run_log_level_that_names_no_level(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "RUN_LOG_LEVEL": "LOUD"}
    messages = checks.check_run_log()
    assert ids(messages) == ["orchestrator.E030"]
    assert "'LOUD'" in messages[0].msg and "INFO" in messages[0].hint


@pytest.mark.parametrize("size", ["64k", -1, 1.5, True])
def test_e031_run_log_max_bytes_not_a_whole_number(settings, size):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "RUN_LOG_MAX_BYTES": size}
    messages = checks.check_run_log()
    assert ids(messages) == ["orchestrator.E031"]
    assert "RUN_LOG_MAX_BYTES" in messages[0].msg


def test_w030_run_log_max_bytes_above_one_mebibyte(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "RUN_LOG_MAX_BYTES": 4 * 1024 * 1024}
    messages = checks.check_run_log()
    assert ids(messages) == ["orchestrator.W030"]
    assert isinstance(messages[0], Warning)
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "RUN_LOG_MAX_BYTES": 1024 * 1024}
    assert checks.check_run_log() == []


def test_e025_metrics_token_not_a_string(settings):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "METRICS_TOKEN": 12345}
    errors = [e for e in checks.check_settings() if e.id == "orchestrator.E025"]
    assert len(errors) == 1 and isinstance(errors[0], Error)
    assert "must be a string, not int" in errors[0].msg


@pytest.mark.parametrize("token", ["short", " padded-token-that-is-long-enough-123 "])
def test_w025_metrics_token_short_or_padded(settings, token):
    settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "METRICS_TOKEN": token}
    warnings = [e for e in checks.check_settings() if e.id == "orchestrator.W025"]
    assert len(warnings) == 1 and isinstance(warnings[0], Warning)
    assert "METRICS_TOKEN" in warnings[0].msg


def test_w025_quiet_for_a_long_token_or_none(settings):
    for token in ("", "x" * 32):
        settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, "METRICS_TOKEN": token}
        assert not [e for e in checks.check_settings() if e.id.endswith("025")]
