"""Run the benchmarks and print markdown tables.

    python -m bench                      # full run (1,000 and 10,000 tasks; 10,000 runs; ...)
    python -m bench --smoke              # small N, as CI runs it
    python -m bench --only beat_sync     # one benchmark
    python -m bench --only retention --runs 200000   # a smaller history to prune

Needs DATABASE_URL (PostgreSQL) and, for the dispatch, alert storm and scheduler benchmarks,
CELERY_BROKER_URL (Redis): they start their own Celery workers or beats.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time

from bench.env import setup_django, throwaway_database

BENCHMARKS = ("beat_sync", "dispatch", "alert_storm", "scheduler", "retention")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small N, a few seconds each")
    parser.add_argument("--only", choices=BENCHMARKS, action="append")
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="size of the history the retention benchmark prunes (default 1,000,000; "
        "20,000 with --smoke)",
    )
    args = parser.parse_args(argv)
    setup_django()
    chosen = args.only or list(BENCHMARKS)
    with throwaway_database() as name:
        from django.db import connection

        print(f"# orchestrator benchmarks ({connection.vendor} database {name})\n")
        for benchmark in chosen:
            module = importlib.import_module(f"bench.{benchmark}_bench")
            started = time.perf_counter()
            print(f"## {benchmark}\n")
            options = {"smoke": args.smoke}
            if "runs" in inspect.signature(module.main).parameters:
                options["runs"] = args.runs
            print(module.main(**options))
            print(f"\n({time.perf_counter() - started:.1f} s)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
