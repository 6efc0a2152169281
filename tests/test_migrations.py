import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_every_model_change_has_a_migration():
    # Exits with SystemExit(1) when makemigrations would write a migration.
    call_command("makemigrations", "orchestrator", "--check", "--dry-run", verbosity=0)
