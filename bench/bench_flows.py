"""What Prefect costs the agent: per-job overhead, drain time, and memory over many jobs.

    .venv/bin/python bench/bench_flows.py [--jobs 2000] [--max-seconds 900]

Uses $PREFECT_API_URL if set, else starts a throw-away local server (prefect_test_harness).
Every job is a trivial local process (`true`), so what is measured is the agent's and
Prefect's own cost, not the job's. Numbers vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from agent_lib import AgentConfig, LaunchAgent, open_backend
from agent_lib.states import TERMINAL_ITEM_STATES

TRIVIAL = {"resource": "local-process", "overrides": {"entry_point": ["true"]}}
FAST = {"poll_interval": 0.02, "heartbeat_interval": 1.0, "stop_check_interval": 1.0}


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def prefect_server() -> Iterator[None]:
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def fresh_queue(root: Path, name: str, jobs: int) -> tuple[str, dict[str, Any]]:
    """A new SQLite queue with `jobs` trivial items; returns its URL and agent settings."""
    url = f"sqlite:///{root / name}.db"
    db = open_backend(url)
    for _ in range(jobs):
        db.push_to_run_queue("bench", TRIVIAL)
    db.close()
    return url, {**FAST, "data_dir": str(root / name)}


def plain_drain(root: Path, jobs: int, max_jobs: int) -> float:
    url, settings = fresh_queue(root, f"plain-{max_jobs}", jobs)
    config = AgentConfig.load(
        None,
        queues=["bench"],
        max_jobs=max_jobs,
        backend_url=url,
        exit_when_idle=True,
        **settings,
    )
    db = open_backend(url)
    started = time.perf_counter()
    asyncio.run(LaunchAgent(db, config).loop())
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def flow_drain(root: Path, jobs: int, max_jobs: int) -> float:
    from flows import drain

    url, settings = fresh_queue(root, f"flow-{max_jobs}", jobs)
    started = time.perf_counter()
    state = asyncio.run(
        drain(
            queues=["bench"],
            max_jobs=max_jobs,
            backend_url=url,
            settings=settings,  # type: ignore[arg-type]
            return_state=True,
        )
    )
    elapsed = time.perf_counter() - started
    assert state.is_completed(), state
    return elapsed


def memory_run(
    root: Path, jobs: int, max_jobs: int, max_seconds: float
) -> list[tuple[int, float, float]]:
    """Run the launch-agent flow over `jobs` items; (jobs done, RSS MB, seconds) samples."""
    from flows import launch_agent

    url, settings = fresh_queue(root, "memory", jobs)
    samples: list[tuple[int, float, float]] = []
    done = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        db = open_backend(url)
        marks = [m for m in (10, 100, 250, 500, 1000, 1500, 2000, 3000, 5000) if m <= jobs]
        while not done.wait(0.5):
            ended = sum(
                1 for i in db.list_items(limit=jobs + 10) if i.state in TERMINAL_ITEM_STATES
            )
            elapsed = time.perf_counter() - started
            while marks and ended >= marks[0]:
                samples.append((marks.pop(0), rss_mb(), elapsed))
                print(
                    f"  {samples[-1][0]:>5} jobs: RSS {samples[-1][1]:.0f} MB at {elapsed:.0f} s",
                    flush=True,
                )
            if elapsed > max_seconds:
                for agent in db.list_agents():
                    db.stop_agent(agent.id)  # stopPolling: the agent finishes its jobs, exits
                print(
                    f"  time cap {max_seconds:.0f} s reached at {ended} jobs; stopping", flush=True
                )
                break
        db.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    asyncio.run(
        launch_agent(
            queues=["bench"],
            max_jobs=max_jobs,
            backend_url=url,
            stop_after_jobs=jobs,  # type: ignore[arg-type]
            settings=settings,
            status_seconds=10.0,
            return_state=True,
        )
    )
    done.set()
    sampler.join()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs for the memory run")
    parser.add_argument("--max-seconds", type=float, default=900, help="cap on the memory run")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    print(f"RSS at start: {rss_mb():.0f} MB")
    with tempfile.TemporaryDirectory() as tmp, prefect_server():
        root = Path(tmp)
        n = 20
        plain_1 = plain_drain(root, n, 1)
        flow_1 = flow_drain(root, n, 1)
        print(
            f"{n} trivial jobs one at a time: plain agent_lib {plain_1:.2f} s "
            f"({plain_1 / n * 1000:.0f} ms/job), flow mode {flow_1:.2f} s "
            f"({flow_1 / n * 1000:.0f} ms/job)"
        )
        print(f"Prefect's added cost per job: {(flow_1 - plain_1) / n * 1000:.0f} ms")
        plain_4 = plain_drain(root, n, 4)
        flow_4 = flow_drain(root, n, 4)
        print(
            f"drain {n} trivial jobs, max_jobs 4: flow mode {flow_4:.2f} s "
            f"(plain agent_lib {plain_4:.2f} s)"
        )
        if not args.skip_memory:
            print(f"memory: launch-agent flow over {args.jobs} jobs, max_jobs 4")
            samples = memory_run(root, args.jobs, 4, args.max_seconds)
            for count, mb, secs in samples:
                print(f"RSS after {count} jobs: {mb:.0f} MB ({secs:.0f} s)")


if __name__ == "__main__":
    main()
