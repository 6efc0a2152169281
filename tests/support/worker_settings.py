"""Settings of the notification integration tests' worker subprocesses.

The test settings plus what only the notification tests need, read from the environment the
test passes to ``start_worker``: the notification queue and a quicker delivery retry policy.
"""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import ORCHESTRATOR

ORCHESTRATOR = {
    **ORCHESTRATOR,
    "NOTIFICATION_QUEUE": os.environ.get("ORCHESTRATOR_NOTIFICATION_QUEUE") or None,
    "NOTIFICATION_RETRY": json.loads(os.environ.get("ORCHESTRATOR_NOTIFICATION_RETRY", "{}")),
}
