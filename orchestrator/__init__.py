"""orchestrator: scheduled Celery work as data, managed from the Django admin."""

__version__ = "0.1.0"
