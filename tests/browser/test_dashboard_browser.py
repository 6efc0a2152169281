"""The dashboard in headless Chromium: log in, Run now, see the run a real worker wrote.

JavaScript is off in these pages (see conftest.py), so they also prove every action is a plain
form. Screenshots go to test-artifacts/; with ORCHESTRATOR_UPDATE_SCREENSHOT=1 the seeded
dashboard is also written to docs/dashboard.png for the README.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from orchestrator.models import TaskRun
from tests.conftest import ARTIFACTS
from tests.utils import make_channel, make_definition, make_scheduled_task

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"


def log_in(page, base_url: str, username: str) -> None:
    page.goto(base_url + "/")
    # Anonymous visitors land on the admin login, which sends them back to the dashboard.
    assert "/admin/login/" in page.url
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(base_url + "/")


def wait_for_row(page, selector: str, timeout: float = 45.0):
    """Reload until ``selector`` is on the page (no JavaScript, so no live refresh)."""
    deadline = time.monotonic() + timeout
    while True:
        row = page.query_selector(selector)
        if row is not None:
            return row
        if time.monotonic() > deadline:
            page.screenshot(path=str(ARTIFACTS / "browser-timeout.png"), full_page=True)
            raise TimeoutError(f"{selector} did not appear within {timeout}s")
        time.sleep(0.5)
        page.reload()


@pytest.mark.browser
@pytest.mark.integration
def test_run_now_from_the_dashboard_shows_the_new_run_in_its_history(
    live_server, start_worker, page
) -> None:
    User.objects.create_superuser("operator", "ops@example.com", PASSWORD)
    task = make_scheduled_task(
        "browser-add", "tests.sample_tasks.add", cron="0 5 * * *", kwargs={"a": 40, "b": 2}
    )
    start_worker()

    log_in(page, live_server.url, "operator")
    row = page.locator(f"tr#task-{task.pk}")
    assert "browser-add" in row.inner_text()
    assert "never run" in row.inner_text()

    row.get_by_role("button", name="Run now: browser-add").click()
    page.wait_for_load_state()
    assert "“browser-add” was sent to the workers" in page.locator(".messages").inner_text()

    row.locator("a.task-name").click()
    page.wait_for_url(f"{live_server.url}/tasks/{task.pk}/")
    run_row = wait_for_row(page, "tr.run-row[data-trigger=manual][data-status=succeeded]")
    assert "Manual" in run_row.inner_text()
    assert "Succeeded" in run_row.inner_text()
    page.screenshot(path=str(ARTIFACTS / "browser-task-detail.png"), full_page=True)

    run = TaskRun.objects.get(scheduled_task=task)
    assert (run.trigger, run.status, run.result) == ("manual", "succeeded", 42)


def seed_demo_history() -> None:
    """A few tasks with a week of mixed history, as an operator would see them."""
    rng = random.Random(7)
    now = timezone.now()
    billing = make_definition("send invoices", "tests.sample_tasks.noop", category="billing")
    reports = make_definition("weekly report", "tests.sample_tasks.echo", category="reports")
    sync = make_definition("sync inventory", "tests.sample_tasks.add", category="inventory")
    slack = make_channel(
        "ops-slack", kind="slack", target="https://hooks.slack.com/services/T0/B0/xyz123456789"
    )
    tasks = [
        (
            make_scheduled_task("invoices-daily", definition=billing, cron="30 6 * * mon-fri"),
            0.02,
            8,
        ),
        (
            make_scheduled_task(
                "inventory-sync",
                definition=sync,
                cron="*/15 * * * *",
                kwargs={"a": 1},
                queue="slow",
            ),
            0.25,
            40,
        ),
        (make_scheduled_task("weekly-report", definition=reports, cron="0 7 * * mon"), 0.0, 90),
        (
            make_scheduled_task(
                "cleanup-sessions", definition=billing, cron="0 3 * * *", enabled=False
            ),
            0.1,
            3,
        ),
    ]
    for task, _, _ in tasks:
        task.notification_channels.add(slack)
    runs = []
    for task, failure_rate, typical in tasks:
        for i in range(30):
            started = now - dt.timedelta(hours=5 * i + rng.random())
            roll = rng.random()
            status = "succeeded"
            error_type = error_message = ""
            if roll < failure_rate:
                status = rng.choice(["failed", "retried", "lost"])
                error_type = {
                    "failed": "ConnectionError",
                    "retried": "TimeoutError",
                    "lost": "WorkerLostError",
                }[status]
                error_message = {
                    "failed": "inventory API answered 502 Bad Gateway",
                    "retried": "read timed out after 30 s",
                    "lost": "worker exited with signal 9 (SIGKILL)",
                }[status]
            runs.append(
                TaskRun(
                    scheduled_task=task,
                    status=status,
                    trigger="manual" if i == 3 else "schedule",
                    started_at=started,
                    duration=dt.timedelta(seconds=typical * (0.6 + rng.random())),
                    error_type=error_type,
                    error_message=error_message,
                )
            )
    TaskRun.objects.bulk_create(runs)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_screenshot_of_the_dashboard_with_history(live_server, page) -> None:
    seed_demo_history()
    User.objects.create_superuser("operator", "ops@example.com", PASSWORD)

    log_in(page, live_server.url, "operator")
    assert page.locator("table.tasks tbody tr").count() == 4
    assert page.locator("svg.sparkline rect.run").count() > 0
    target = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(target), full_page=True)
    if os.environ.get("ORCHESTRATOR_UPDATE_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=True)


@pytest.mark.browser
@pytest.mark.integration
def test_pause_resume_run_with_arguments_and_cancel_from_the_dashboard(
    live_server, start_worker, page, scratch_dir: Path
) -> None:
    User.objects.create_superuser("operator", "ops@example.com", PASSWORD)
    log = scratch_dir / "calls.log"
    task = make_scheduled_task(
        "browser-record",
        "tests.sample_tasks.record_and_wait",
        cron="0 5 * * *",
        kwargs={"log_file": str(log), "label": "usual", "seconds": 0},
    )
    start_worker(concurrency=1)
    log_in(page, live_server.url, "operator")
    page.goto(f"{live_server.url}/tasks/{task.pk}/")

    # Pause with a reason: the page says so, the overview's filter finds it; then resume.
    page.fill("#pause-controls input[name=reason]", "deploy freeze")
    with page.expect_navigation():
        page.get_by_role("button", name="Pause: browser-record").click()
    assert "Paused: deploy freeze" in page.locator(".paused-note").inner_text()
    page.goto(f"{live_server.url}/?enabled=paused")
    assert page.locator(f"tr#task-{task.pk}").count() == 1
    page.goto(f"{live_server.url}/tasks/{task.pk}/")
    with page.expect_navigation():
        page.get_by_role("button", name="Resume: browser-record").click()
    assert page.locator(".paused-note").count() == 0

    # Arguments that do not fit come back on the form; good ones reach the function.
    page.fill("#run-with-arguments textarea[name=kwargs]", '{"nope": 1}')
    with page.expect_navigation():
        page.get_by_role("button", name="Run with arguments: browser-record").click()
    assert "Unknown argument(s) nope" in page.locator("#run-with-arguments").inner_text()
    arguments = f'{{"log_file": "{log}", "label": "special", "seconds": 20}}'
    page.fill("#run-with-arguments textarea[name=kwargs]", arguments)
    with page.expect_navigation():
        page.get_by_role("button", name="Run with arguments: browser-record").click()
    running = wait_for_row(page, "tr.run-row[data-status=running]")
    assert "own arguments" in running.inner_text()

    # Cancel the running run; the change history lists the pause and the resume.
    with page.expect_navigation():
        running.query_selector("button").click()
    cancelled = wait_for_row(page, "tr.run-row[data-status=cancelled]")
    assert "cancelled by operator" in cancelled.inner_text()
    assert log.read_text().split() == ["special"]
    changes = page.locator("#history").inner_text()
    assert "pause_reason" in changes and "dashboard" in changes
    page.screenshot(path=str(ARTIFACTS / "browser-operator-controls.png"), full_page=True)
