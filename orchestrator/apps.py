from types import ModuleType

from django.apps import AppConfig


class OrchestratorConfig(AppConfig):
    """The app's composition root: it connects the services to the signals they listen to, and
    gives the models the operations service (``ScheduledTask.run_now`` asks for it here, so the
    models never import a layer above them)."""

    name = "orchestrator"
    verbose_name = "Orchestrator"
    default_auto_field = "django.db.models.BigAutoField"
    operations: ModuleType

    def ready(self) -> None:
        # Connecting receivers and registering checks only: no database queries here.
        # The Celery tasks are defined with @shared_task: importing them here registers them
        # with the project's app in every process (web included), so services that send by
        # name go through the task object and task_always_eager applies in tests.
        from orchestrator import (  # noqa: F401
            beat_sync,
            checks,
            operations,
            tasks,
        )
        from orchestrator.notifications import receivers

        self.operations = operations
        beat_sync.connect_signals()
        receivers.connect()
