"""Settings of the demo project.

Everything the demo writes lives in one folder, ``$DEMO_DIR`` (``.demo/`` at the repository root
by default, git-ignored): the SQLite database, the filesystem broker's messages and the secret
key. ``DATABASE_URL`` and ``CELERY_BROKER_URL`` switch to a real database and broker (such as
PostgreSQL and Redis) without touching this file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
import django

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = Path(os.environ.get("DEMO_DIR") or REPO_ROOT / ".demo").resolve()
DEMO_PORT = int(os.environ.get("DEMO_PORT") or 8000)


def _secret_key(path: Path) -> str:
    """A random key kept in DEMO_DIR, so sessions survive restarts and nothing secret is in git."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or _secret_key(DEMO_DIR / "secret_key")
# run.py turns DEBUG off for the worker and beat: Celery warns that DEBUG leaks memory in
# long-running processes (every query is kept), while runserver needs it to serve static files.
DEBUG = os.environ.get("DEMO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = os.environ.get("DEMO_TIME_ZONE", "UTC")
ROOT_URLCONF = "demo_project.urls"
WSGI_APPLICATION = "demo_project.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "admin:login"

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
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
    "default": dj_database_url.config(
        default=f"sqlite:///{DEMO_DIR / 'db.sqlite3'}", conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat write to one SQLite file at once: WAL lets readers work during a
    # write, IMMEDIATE transactions take the write lock up front (no deadlock on upgrade), and
    # the timeout makes a writer wait for the lock instead of failing with "database is locked".
    sqlite_options: dict[str, Any] = {"timeout": 30}
    if django.VERSION >= (5, 1):
        sqlite_options["transaction_mode"] = "IMMEDIATE"
        sqlite_options["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    DATABASES["default"].setdefault("OPTIONS", {}).update(sqlite_options)

STATIC_URL = "/static/"
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = "orchestrator-demo@example.com"

# Celery. Without CELERY_BROKER_URL the demo needs no server: kombu's filesystem transport passes
# messages between processes as files in DEMO_DIR/broker (it has no message priorities).
BROKER_DIR = DEMO_DIR / "broker"
# The filesystem transport ignores the host; naming one silences a kombu warning.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://localhost//"
if CELERY_BROKER_URL.startswith("filesystem"):
    for folder in ("queue", "processed", "control"):
        # Created here rather than in run.py so a worker started by hand finds them too.
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        # The same folder in and out: every process reads what the others write.
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        "control_folder": str(BROKER_DIR / "control"),
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Redis: one list per priority (0-9), served in order; ignored by RabbitMQ.
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
        "visibility_timeout": 3600,
    }
CELERY_TASK_DEFAULT_QUEUE = "celery"
# Priorities only work when a worker takes one message at a time and acknowledges it after the
# run; a prefetched message would skip the queue's order.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
# RabbitMQ only: declares queues with x-max-priority, so priorities 0-9 are honoured.
CELERY_TASK_QUEUE_MAX_PRIORITY = 10
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "orchestrator.scheduler:Scheduler"
CELERY_TIMEZONE = TIME_ZONE

ORCHESTRATOR = {
    "ALLOWED_TASK_MODULES": ["demo_jobs", "orchestrator.builtin_tasks"],
    "BASE_URL": os.environ.get("DEMO_BASE_URL") or f"http://127.0.0.1:{DEMO_PORT}",
    # `celery beat` mirrors every ScheduledTask into django-celery-beat before its first tick.
    "STARTUP_TASK_SYNC": True,
    # Slack webhooks must be https on these hosts; plain http only to a loopback host:port listed
    # here, such as a local Slack look-alike: DEMO_SLACK_LOOKALIKE=127.0.0.1:8099.
    "WEBHOOK_ALLOWED_HOSTS": [
        "hooks.slack.com",
        *filter(None, [os.environ.get("DEMO_SLACK_LOOKALIKE", "")]),
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"short": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "short"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
