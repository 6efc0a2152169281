import os
import shutil
from pathlib import Path

import pytest

# The test project's Celery app becomes the current app, as a project's __init__ would make it.
import tests.celery_app  # noqa: F401

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARTIFACTS.mkdir(exist_ok=True)


def services_required() -> bool:
    """In CI the integration tests must run: an unreachable service fails them, never skips."""
    return os.environ.get("ORCHESTRATOR_REQUIRE_SERVICES", "") not in ("", "0", "false")


@pytest.fixture
def scratch_dir(tmp_path: Path) -> Path:
    """A folder that worker subprocesses can read and write too."""
    path = ARTIFACTS / "scratch" / tmp_path.name
    path.mkdir(parents=True, exist_ok=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)
