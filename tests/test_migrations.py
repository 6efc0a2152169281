import os
import subprocess
import sys

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import models

from tests.support.processes import ROOT


@pytest.mark.django_db
def test_every_model_change_has_a_migration():
    # Exits with SystemExit(1) when makemigrations would write a migration.
    call_command("makemigrations", "orchestrator", "--check", "--dry-run", verbosity=0)


def test_every_generated_key_is_a_bigint_whatever_the_project_default():
    for model in apps.get_app_config("orchestrator").get_models(include_auto_created=True):
        if isinstance(model._meta.pk, models.AutoField):  # not a declared key (TaskState's)
            assert isinstance(model._meta.pk, models.BigAutoField), model


# Django up to 5.2 defaults DEFAULT_AUTO_FIELD to AutoField (startproject sets BigAutoField),
# Django 6.0 to BigAutoField: the app config pins BigAutoField, so no project setting asks for a
# migration. A new process, since the setting is read when the models are built.
@pytest.mark.parametrize("default_auto_field", ["django.db.models.AutoField", ""])
def test_the_project_default_auto_field_asks_for_no_migration(default_auto_field: str) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": "sqlite://:memory:",
        "ORCHESTRATOR_TEST_DEFAULT_AUTO_FIELD": default_auto_field,
    }
    result = subprocess.run(
        [sys.executable, "-m", "django", "makemigrations", "orchestrator", "--check", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db(transaction=True)
def test_the_rollups_migration_counts_the_history_that_exists() -> None:
    import datetime as dt

    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    rollups_migration = ("orchestrator", "0008_rollups")
    executor = MigrationExecutor(connection)
    before = sorted(executor.loader.graph.node_map[rollups_migration].parents)[0].key
    leaves = executor.loader.graph.leaf_nodes("orchestrator")
    executor.migrate([before])
    old = executor.loader.project_state([before]).apps
    definition = old.get_model("orchestrator", "TaskDefinition").objects.create(
        name="d", import_path="tests.sample_tasks.noop"
    )
    task = old.get_model("orchestrator", "ScheduledTask").objects.create(
        name="t", task_definition=definition, cron="* * * * *", timezone="UTC"
    )
    at = dt.datetime(2026, 3, 1, 10, 30, tzinfo=dt.UTC)
    runs = old.get_model("orchestrator", "TaskRun").objects
    for status in ("succeeded", "succeeded", "failed", "running"):
        runs.create(scheduled_task=task, status=status, started_at=at)

    executor = MigrationExecutor(connection)
    executor.migrate(leaves)

    from orchestrator.models import TaskRunRollup

    counted = {row.status: row.runs for row in TaskRunRollup.objects.filter(scheduled_task=task.pk)}
    assert counted == {"succeeded": 2, "failed": 1}
