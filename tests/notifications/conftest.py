import datetime as dt

from orchestrator.notifications.events import Alert

# The worker fixtures of the integration tests, for test_integration.py.
from tests.integration.conftest import broker_url, real_database, start_worker  # noqa: F401

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
RUN_URL = "http://testserver/admin/orchestrator/taskrun/42/change/"


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
