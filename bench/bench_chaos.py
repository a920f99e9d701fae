"""Chaos runs (not tests): agents SIGKILLed and restarted at random while jobs run.

Usage (PostgreSQL from `eval "$(scripts/services)"` for `--backend postgresql`):
    .venv/bin/python bench/bench_chaos.py [--backend sqlite|postgresql] [--items 200]
        [--agents 2] [--kills 30] [--runs 3] [--seed 1]

Each run pushes `--items` short local-process jobs (one in five exits 3), starts `--agents`
agents, SIGKILLs one at random up to `--kills` times (restarting it at once, or, one time
in four, only after it was reaped as lost), then drains the queue and counts items with a
wrong or lost outcome, jobs started twice and processes left running. Exits 1 if any.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault(
    "LAUNCH_AGENT_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)

from agent_lib.backends import SqlBackend, open_backend
from bench.common import bench_database
from tests.chaos import run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    totals = {"items": 0, "kills": 0, "wrong": 0, "twice": 0, "lost": 0, "orphans": 0}
    for run in range(args.runs):
        with (
            tempfile.TemporaryDirectory() as tmp,
            bench_database(args.backend, Path(tmp), "la_bench_chaos") as url,
        ):
            backend: SqlBackend = open_backend(url)  # type: ignore[assignment]
            try:
                report = run_chaos(
                    backend,
                    url,
                    Path(tmp),
                    items=args.items,
                    agents=args.agents,
                    max_kills=args.kills,
                    seed=args.seed + run,
                    deadline_seconds=600,
                )
            finally:
                backend.close()
        print(f"run {run + 1} ({args.backend}): {report.summary()}", flush=True)
        for line in [*report.wrong, *report.started_twice, *report.never_ended, *report.orphans]:
            print(f"  {line}")
        totals["items"] += report.items
        totals["kills"] += report.kills
        totals["wrong"] += len(report.wrong)
        totals["twice"] += len(report.started_twice)
        totals["lost"] += len(report.never_ended)
        totals["orphans"] += len(report.orphans)
    print(
        f"total ({args.backend}, {args.runs} runs): {totals['items']} items, {totals['kills']} "
        f"SIGKILLs; wrong or lost outcome {totals['wrong']}, started twice {totals['twice']}, "
        f"not run exactly once {totals['lost']}, orphans {totals['orphans']}"
    )
    return 1 if totals["wrong"] or totals["twice"] or totals["lost"] or totals["orphans"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
