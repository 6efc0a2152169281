"""Run the benchmarks and print markdown tables.

    python -m bench                      # full run (1,000 and 10,000 tasks; 10,000 runs; ...)
    python -m bench --smoke              # small N, as CI runs it
    python -m bench --only beat_sync     # one benchmark
    python -m bench --only retention --runs 200000   # a smaller history to prune
    python -m bench --only scale --runs 1000000   # the pages over a smaller history

Needs DATABASE_URL (PostgreSQL) and, for the dispatch, alert storm and scheduler benchmarks,
CELERY_BROKER_URL (Redis): they start their own Celery workers or beats. The scale benchmark
keeps its data (10 million runs take minutes to load) in the database ``<name>_scale``, which
it creates; its smoke run uses the throwaway database like the others.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time

from bench.env import kept_database, setup_django, throwaway_database

BENCHMARKS = ("beat_sync", "dispatch", "alert_storm", "scheduler", "retention", "scale")
# Benchmarks whose data outlives the run (outside --smoke): loading it takes minutes.
KEPT_DATA = ("scale",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small N, a few seconds each")
    parser.add_argument("--only", choices=BENCHMARKS, action="append")
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="size of the history: the one retention prunes (default 1,000,000; 20,000 with "
        "--smoke) and the one scale reads (default 10,000,000)",
    )
    parser.add_argument("--tasks", type=int, help="scale: scheduled tasks (default 1,000)")
    parser.add_argument(
        "--rebuild", action="store_true", help="scale: build the history again even if kept"
    )
    args = parser.parse_args(argv)
    setup_django()
    chosen = args.only or list(BENCHMARKS)
    kept = [] if args.smoke else [name for name in chosen if name in KEPT_DATA]
    throwaway = [name for name in chosen if name not in kept]
    if throwaway:
        with throwaway_database() as name:
            _run(throwaway, name, args)
    for benchmark in kept:
        with kept_database(benchmark) as name:
            _run([benchmark], name, args)
    return 0


def _run(benchmarks: list[str], database: str, args: argparse.Namespace) -> None:
    from django.db import connection

    print(f"# orchestrator benchmarks ({connection.vendor} database {database})\n")
    for benchmark in benchmarks:
        module = importlib.import_module(f"bench.{benchmark}_bench")
        # Each benchmark takes the size flags its main() names.
        wanted = inspect.signature(module.main).parameters
        options = {
            flag: getattr(args, flag) for flag in ("runs", "tasks", "rebuild") if flag in wanted
        }
        started = time.perf_counter()
        print(f"## {benchmark}\n")
        print(module.main(smoke=args.smoke, **options))
        print(f"\n({time.perf_counter() - started:.1f} s)\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
