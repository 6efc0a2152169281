"""The names of orchestrator's Celery tasks, in one place.

Services send messages by these names (``app.send_task``) instead of importing the task
objects, which live at the edge in :mod:`orchestrator.tasks` and
:mod:`orchestrator.notifications.tasks`; beat_sync writes them into django-celery-beat's rows.
"""

RUN_SCHEDULED_TASK = "orchestrator.run_scheduled_task"
RUN_MAINTENANCE = "orchestrator.run_maintenance"
DELIVER_NOTIFICATION = "orchestrator.deliver_notification"
