"""Every speed goal of the project in one table (benchmarks, not tests).

    .venv/bin/python bench/run.py [--quick] [--flows]

Runs the other bench scripts' measurements and prints one Markdown table: what, measured,
goal. PostgreSQL rows need `eval "$(scripts/services)"` (LAUNCH_AGENT_TEST_POSTGRES_URL);
`--flows` adds the flow-mode rows (a throw-away Prefect server, or $PREFECT_API_URL).
Numbers vary with the machine and its load: the README says where they were taken.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_agent, bench_cli, bench_throughput

Row = tuple[str, str, str]


def idle_latency(rounds: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        latencies, _ = bench_agent.idle_agent_latencies(Path(tmp), rounds)
    median = statistics.median(latencies) * 1000
    return [("push -> job start, idle SQLite agent (median)", f"{median:.0f} ms", "<= 20 ms")]


def throughput(jobs: int) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for slots in (1, 8):
            rate, _wall, _cpu = bench_throughput.drain(Path(tmp) / str(slots), jobs, slots, "fork")
            goal = ">= 200 jobs/s" if slots == 8 else ""
            rows.append(
                (f"{jobs} trivial jobs, SQLite, max_jobs {slots}", f"{rate:.0f} jobs/s", goal)
            )
    return rows


def plain_memory(jobs: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        samples = bench_throughput.memory_drain(Path(tmp), jobs)
    warm, growth = bench_throughput.rss_growth(samples, jobs // 100)
    return [
        (
            f"agent RSS growth over {jobs} trivial jobs, SQLite, max_jobs 8",
            f"{growth:+.1f} MB (from {warm:.0f} MB)",
            "<= 10 MB over 10,000",
        )
    ]


def postgres_pops(items: int) -> list[Row]:
    if not os.environ.get("LAUNCH_AGENT_TEST_POSTGRES_URL"):
        return [("pop+ack+complete, PostgreSQL, 8 processes", "not run (no PostgreSQL)", "")]
    from bench.bench_pg import bench_pops, commit_floor

    rate, floor = bench_pops(8, items), commit_floor(8, items)
    return [
        ("pop+ack+complete, PostgreSQL, 8 processes", f"{rate:.0f} items/s", ">= 1,000/s"),
        ("  the same 3 commits per item, bare (raw psycopg)", f"{floor:.0f} items/s", ""),
    ]


def flow_mode() -> list[Row]:
    """Flow mode against a bare Prefect flow of the same shape, in one run on one server."""
    from bench.bench_flows import compare, prefect_server

    with tempfile.TemporaryDirectory() as tmp, prefect_server():
        c = compare(Path(tmp), 20)
    added = f"{c.added_ms:.0f} ms ({c.ratio:.1f}x a bare flow's {c.bare_ms:.0f} ms)"
    drained = f"{c.flow_4:.1f} s (a bare flow: {c.bare_4:.1f} s)"
    return [
        ("flow mode: Prefect's added cost per job", added, "<= 1.5x a bare flow"),
        ("flow mode: 20 jobs on 4 slots", drained, "< 3 s (Prefect on PostgreSQL)"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and jobs")
    parser.add_argument("--flows", action="store_true", help="add the flow-mode rows")
    args = parser.parse_args()
    rounds, jobs = (5, 200) if args.quick else (20, 1000)
    parts: list[Callable[[], list[Row]]] = [
        lambda: bench_cli.rows(rounds),
        lambda: idle_latency(rounds),
        lambda: throughput(jobs),
        lambda: plain_memory(jobs * 10),
        lambda: postgres_pops(jobs * 2),
    ]
    if args.flows:
        parts.append(flow_mode)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    print("| what | measured | goal |\n| --- | --- | --- |")
    for part in parts:
        for what, measured, goal in part():
            print(f"| {what} | {measured} | {goal} |", flush=True)


if __name__ == "__main__":
    main()
