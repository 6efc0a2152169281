"""Example jobs of the demo: plain functions, named by TaskDefinitions in the admin.

Orchestrator calls them with the ScheduledTask's kwargs; a return value is stored on the run, an
exception makes the run fail (and retry, following the task's retry policy). They know nothing
about Celery.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from typing import Any


def generate_sales_report(region: str = "EMEA", days: int = 7) -> dict[str, Any]:
    """Always succeeds: a small summary, stored as the run's result."""
    # Seeded by the arguments and the date, so the figures change daily but not between retries.
    today = dt.date.today()
    rng = random.Random(f"{region}-{days}-{today.isoformat()}")
    orders = rng.randint(40, 400) * days
    return {
        "region": region,
        "period": f"{today - dt.timedelta(days=days)} to {today}",
        "orders": orders,
        "revenue_eur": round(orders * rng.uniform(35.0, 120.0), 2),
    }


def sync_inventory(warehouse: str = "berlin-1", failure_rate: float = 0.3) -> dict[str, Any]:
    """Fails now and then (``failure_rate`` of the calls): its retries usually recover."""
    if random.random() < failure_rate:
        raise TimeoutError(f"warehouse {warehouse} did not answer within 5 s")
    return {"warehouse": warehouse, "items_updated": random.randint(10, 500)}


def sync_erp_orders(endpoint: str = "https://erp.example.invalid/api/orders") -> None:
    """Always fails, as an unreachable system would: retries run out and the run ends failed."""
    raise ConnectionError(f"cannot reach the ERP at {endpoint}: connection refused")


def rebuild_search_index(seconds: float = 8.0) -> dict[str, Any]:
    """Takes a while, so the dashboard shows a run in progress and durations vary."""
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return {"documents": random.randint(1000, 5000), "seconds": round(elapsed, 1)}
