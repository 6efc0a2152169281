"""Settings of a benchmark worker that keeps its database connection between tasks.

The test settings close the connection after every task (Django's default CONN_MAX_AGE=0), so
each run pays a new PostgreSQL connection; with persistent connections what is left is the
work of the task itself.
"""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 600
