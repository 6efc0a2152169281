"""Settings of a benchmark worker that keeps its database connection between tasks.

With the test settings each run pays a new PostgreSQL connection: Celery's Django fix-up
(Celery 5.7) closes every connection after each task, whatever ``CONN_MAX_AGE`` says
(celery#9824 reverted honouring it), unless ``CELERY_DB_REUSE_MAX`` is set, and then every that
many tasks. Here what is left is the work of the task itself.
"""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 600
CELERY_DB_REUSE_MAX = 1000
