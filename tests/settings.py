"""Settings for the test suite.

DATABASE_URL picks the database (SQLite by default; CI uses PostgreSQL) and CELERY_BROKER_URL the
broker of the integration tests (Redis in CI). Worker subprocesses started by the integration
tests get ORCHESTRATOR_DB_NAME so they use the test database that pytest-django created.
"""

import os
from pathlib import Path
from typing import Any

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
# A project's DEFAULT_AUTO_FIELD must not change orchestrator's tables (tests/test_migrations.py
# runs with "django.db.models.AutoField" and with none at all, Django's own default).
DEFAULT_AUTO_FIELD = os.environ.get(
    "ORCHESTRATOR_TEST_DEFAULT_AUTO_FIELD", "django.db.models.BigAutoField"
)
if not DEFAULT_AUTO_FIELD:
    del DEFAULT_AUTO_FIELD

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "auditlog",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "orchestrator",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'test-artifacts' / 'db.sqlite3'}"),
        conn_max_age=0,
    )
}
if os.environ.get("ORCHESTRATOR_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["ORCHESTRATOR_DB_NAME"]

STATIC_URL = "/static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.locmem.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
DEFAULT_FROM_EMAIL = "orchestrator@example.com"

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "memory://")
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "priority_steps": list(range(10)),
    "sep": ":",
    "queue_order_strategy": "priority",
    "visibility_timeout": 3600,
}
# The fault tests give a worker a short visibility timeout, swept every second, so that the
# message of a killed worker comes back in seconds rather than an hour.
if os.environ.get("ORCHESTRATOR_TEST_VISIBILITY_TIMEOUT"):
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        visibility_timeout=int(os.environ["ORCHESTRATOR_TEST_VISIBILITY_TIMEOUT"]),
        unacked_restore_interval=1,
        unacked_restore_throttle=1,
    )
# RabbitMQ honours priorities only in queues declared with x-max-priority.
CELERY_TASK_QUEUE_MAX_PRIORITY = 10
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "orchestrator.scheduler:Scheduler"

# The Web API URL of the tests: port 9 on loopback (nothing listens) unless a test's Slack
# look-alike is given to a worker subprocess.
_SLACK_API_URL = os.environ.get("ORCHESTRATOR_SLACK_API_URL", "http://127.0.0.1:9/api/")
ORCHESTRATOR: dict[str, Any] = {
    "ALLOWED_TASK_MODULES": ["tests.sample_tasks", "orchestrator.builtin_tasks"],
    "BASE_URL": "http://testserver",
    "SLACK_API_URL": _SLACK_API_URL,
    "SLACK_BOT_TOKEN": os.environ.get("ORCHESTRATOR_SLACK_BOT_TOKEN", ""),
    # Slack's host, and the loopback host:port of the Slack look-alike (plain http is allowed
    # only for a loopback host listed with its port). Each FakeSlack server listens on a port
    # of its own: the `fake_slack` fixture lists it in this process, and worker subprocesses
    # get it in $ORCHESTRATOR_WEBHOOK_ALLOWED_HOSTS (FakeSlack.worker_env()).
    "WEBHOOK_ALLOWED_HOSTS": [
        "hooks.slack.com",
        _SLACK_API_URL.split("://", 1)[1].split("/", 1)[0],
        *filter(None, os.environ.get("ORCHESTRATOR_WEBHOOK_ALLOWED_HOSTS", "").split(",")),
    ],
}
# Integration tests give their worker a short limit, so a "long" retry takes seconds.
if os.environ.get("ORCHESTRATOR_MAX_BROKER_COUNTDOWN"):
    ORCHESTRATOR["MAX_BROKER_COUNTDOWN"] = int(os.environ["ORCHESTRATOR_MAX_BROKER_COUNTDOWN"])
# The watchdog tests compress its timings: passes every few seconds, short graces.
for _key in ("WATCHDOG_INTERVAL", "MISSED_RUN_GRACE", "SCHEDULER_STALE_AFTER"):
    if os.environ.get(f"ORCHESTRATOR_{_key}"):
        ORCHESTRATOR[_key] = float(os.environ[f"ORCHESTRATOR_{_key}"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
