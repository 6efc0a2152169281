"""The demo project: orchestrator wired into a small Django site with Celery and beat."""

# Importing the Celery app here makes it the current app for every process that loads Django
# (runserver, shell, run.py), so "Run now" publishes with the demo's broker settings.
from demo_project.celery import app as celery_app

__all__ = ["celery_app"]
