from django.apps import AppConfig


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Orchestrator"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connecting receivers and registering checks only: no database queries here.
        from orchestrator import beat_sync, checks  # noqa: F401

        beat_sync.connect_signals()

        from orchestrator.notifications import receivers

        receivers.connect()
