"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright.

Playwright never downloads a browser here: `make setup` (scripts/setup-browser.sh) installs the
distribution's chromium, and the tests point Playwright at it. Without it the tests skip, unless
ORCHESTRATOR_REQUIRE_SERVICES is set (as in CI), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import services_required
from tests.integration import conftest as integration

CHROMIUM = Path(os.environ.get("ORCHESTRATOR_CHROMIUM", "/usr/bin/chromium"))
# Quiet, reproducible and offline: no first-run UI, no background downloads or updates, no QUIC.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# The real-worker fixtures of the integration tests, for the end-to-end browser test.
broker_url = integration.broker_url
real_database = integration.real_database
start_worker = integration.start_worker


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one test module.

    Playwright's sync API keeps an asyncio loop running in the test thread while it is started,
    and Django refuses ORM calls in a thread with a running loop. The tests' ORM calls are plain
    synchronous code, so the guard is lifted, and only for this module: Playwright stops (and
    the loop with it) before the next module's tests run.
    """
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: run `make setup` (scripts/setup-browser.sh)"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        # Playwright gives every launch a fresh temporary --user-data-dir of its own.
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    """A page in a fresh context with JavaScript off: every dashboard action must work so."""
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1440, "height": 900}
    )
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()
