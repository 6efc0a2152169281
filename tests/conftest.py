import os
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
    """A folder that worker subprocesses can read and write too.

    pytest's tmp_path is already unique per test and per session, and subprocesses on this
    machine can use it like the test does.
    """
    return tmp_path
