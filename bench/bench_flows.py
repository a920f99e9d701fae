"""What Prefect costs the agent: per-job overhead, drain time, and memory over many jobs.

    .venv/bin/python bench/bench_flows.py [--jobs 2000] [--max-seconds 900] [--skip-memory]

Uses $PREFECT_API_URL if set, else starts a throw-away local server (prefect_test_harness).
Every job is a trivial local process (`true`), so what is measured is the agent's and
Prefect's own cost, not the job's. The yardstick is a bare Prefect flow of the same shape
(one async subflow per job, as many no-op task runs as a real job has), timed in the same
run on the same server. Numbers vary with the machine and its load.
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
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import State, flow, get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.sorting import FlowRunSort

from agent_lib import AgentConfig, LaunchAgent, SqlBackend, open_backend
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


def flow_drain(root: Path, jobs: int, max_jobs: int) -> tuple[float, UUID]:
    """Seconds to drain `jobs` items in flow mode, and the drain's flow run (to read its jobs)."""
    from flows import drain

    url, settings = fresh_queue(root, f"flow-{max_jobs}", jobs)
    elapsed, state = timed_run(
        drain(
            queues=["bench"],
            max_jobs=max_jobs,
            backend_url=url,
            settings=settings,
            return_state=True,
        )
    )
    assert state.state_details.flow_run_id is not None
    return elapsed, state.state_details.flow_run_id


def timed_run(call: Awaitable[State[Any]]) -> tuple[float, State[Any]]:
    """Run a flow call made with return_state=True to its end: seconds taken, final state."""

    async def wait() -> State[Any]:  # asyncio.run takes a coroutine, Prefect types an Awaitable
        return await call

    started = time.perf_counter()
    state = asyncio.run(wait())
    elapsed = time.perf_counter() - started
    assert state.is_completed(), state
    return elapsed, state


async def _tasks_per_job(drain_run: UUID) -> int:
    async with get_client() as client:
        jobs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[drain_run])
            ),
            sort=FlowRunSort.START_TIME_ASC,
            limit=1,
        )
        assert jobs, f"the drain {drain_run} has no job runs"
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[jobs[0].id]))
        )
    return len(runs)


def tasks_per_job(drain_run: UUID) -> int:
    """How many task runs one job of this drain made: counted, so the bare flow keeps up
    with the agent's steps rather than a number written down once."""
    return asyncio.run(_tasks_per_job(drain_run))


@task(name="bare-step", persist_result=False, cache_policy=NO_CACHE)
async def bare_step() -> None:
    """Does nothing: all that is timed is Prefect's cost of one task run."""


@flow(name="bare-job", persist_result=False, validate_parameters=False)
async def bare_job(tasks: int) -> None:
    """A job's shape without the job: one subflow run, its task runs one after another."""
    for _ in range(tasks):
        await bare_step()


@flow(name="bare-drain", persist_result=False)
async def bare_drain_flow(jobs: int, tasks: int, slots: int) -> None:
    """`jobs` bare subflows, at most `slots` at once, each started as a slot frees (as the
    agent's max_jobs does)."""
    slot = asyncio.Semaphore(slots)

    async def one() -> None:
        async with slot:
            await bare_job(tasks)

    await asyncio.gather(*(one() for _ in range(jobs)))


def bare_drain(jobs: int, tasks: int, slots: int) -> float:
    """Seconds for a bare Prefect flow of the same shape as a drain: Prefect's pure cost."""
    elapsed, _ = timed_run(bare_drain_flow(jobs, tasks, slots, return_state=True))
    return elapsed


@dataclass
class FlowCosts:
    """One comparison's drain times (s), all on the same server in the same run."""

    jobs: int
    tasks_per_job: int
    plain_1: float
    flow_1: float
    bare_1: float
    plain_4: float
    flow_4: float
    bare_4: float

    @property
    def added_ms(self) -> float:
        """What flow mode adds to a job over plain agent_lib, one job at a time."""
        return (self.flow_1 - self.plain_1) / self.jobs * 1000

    @property
    def bare_ms(self) -> float:
        """What Prefect alone costs per subflow of the same shape, one at a time."""
        return self.bare_1 / self.jobs * 1000

    @property
    def ratio(self) -> float:
        return self.added_ms / self.bare_ms


def compare(root: Path, jobs: int = 20) -> FlowCosts:
    """Plain agent, flow mode and the bare flow, 1 then 4 at a time, on one server.

    A bare subflow run first pays Prefect's once-per-process start-up (clients, log and
    event workers), so that neither side is charged for it."""
    bare_drain(1, 1, 1)
    plain_1 = plain_drain(root, jobs, 1)
    flow_1, drain_run = flow_drain(root, jobs, 1)
    tasks = tasks_per_job(drain_run)
    bare_1 = bare_drain(jobs, tasks, 1)
    plain_4 = plain_drain(root, jobs, 4)
    flow_4, _ = flow_drain(root, jobs, 4)
    bare_4 = bare_drain(jobs, tasks, 4)
    return FlowCosts(jobs, tasks, plain_1, flow_1, bare_1, plain_4, flow_4, bare_4)


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
        assert isinstance(db, SqlBackend)  # a fresh_queue: listing items and agents is SQL's
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


def print_costs(c: FlowCosts) -> None:
    """The comparison, each figure beside its yardstick (the bare flow) and its goal."""
    n = c.jobs
    print(
        f"{n} trivial jobs one at a time: plain agent_lib {c.plain_1:.2f} s "
        f"({c.plain_1 / n * 1000:.0f} ms/job), flow mode {c.flow_1:.2f} s "
        f"({c.flow_1 / n * 1000:.0f} ms/job)"
    )
    print(
        f"bare Prefect flow, {n} subflows of {c.tasks_per_job} task runs one at a time: "
        f"{c.bare_1:.2f} s ({c.bare_ms:.0f} ms/subflow)"
    )
    print(
        f"Prefect's added cost per job: {c.added_ms:.0f} ms, "
        f"{c.ratio:.2f}x a bare subflow's {c.bare_ms:.0f} ms (goal <= 1.5x)"
    )
    print(
        f"drain {n} trivial jobs, max_jobs 4: flow mode {c.flow_4:.2f} s, "
        f"bare flow {c.bare_4:.2f} s, plain agent_lib {c.plain_4:.2f} s (goal < 3 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs for the memory run")
    parser.add_argument("--max-seconds", type=float, default=900, help="cap on the memory run")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    print(f"RSS at start: {rss_mb():.0f} MB")
    with tempfile.TemporaryDirectory() as tmp, prefect_server():
        root = Path(tmp)
        print_costs(compare(root))
        if not args.skip_memory:
            print(f"memory: launch-agent flow over {args.jobs} jobs, max_jobs 4")
            samples = memory_run(root, args.jobs, 4, args.max_seconds)
            for count, mb, secs in samples:
                print(f"RSS after {count} jobs: {mb:.0f} MB ({secs:.0f} s)")


if __name__ == "__main__":
    main()
