"""Settings of a worker whose logs are searched for secrets: everything at DEBUG.

The notification worker settings, plus SMTP credentials from the environment and a root logger at
DEBUG (the worker does not hijack the root logger, so ``--loglevel`` alone would not reach it).
The Slack SDK's logger is turned up too, as an operator chasing a delivery problem would.
"""

import os

from tests.support.worker_settings import *  # noqa: F403

EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"levels": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "levels"}},
    "root": {"handlers": ["console"], "level": "DEBUG"},
    "loggers": {"orchestrator.notifications.slack_sdk": {"level": "DEBUG"}},
}
