"""Plain-mode throughput on SQLite, and what one trivial job costs, step by step.

Two parts, each run with the job's supervisor started directly (`python -I -S supervisor.py`,
"direct", the way before the fork server) and as a fork of the fork server ("fork"):

1. Throughput: N `true` items drained by a real `launch-agent run --exit-when-idle` process,
   at max_jobs 1 / 8 / 32: jobs/s from the first claim to the last finish.
2. Per-job breakdown, in this process: the cost of spawning `true` alone (asyncio, as the
   agent would), of the runner's launch (supervisor start + handshake) and wait, and an agent
   in this process draining items with every backend call and job step timed (medians, ms).

Run: .venv/bin/python bench/bench_throughput.py [--jobs 1000] [--slots 1,8,32]
     [--modes direct,fork] [--breakdown-jobs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: make `bench` importable

from agent_lib.backends import open_backend  # noqa: E402
from agent_lib.runners.local_process import FORK_SERVER_SWITCH  # noqa: E402
from agent_lib.states import TERMINAL_ITEM_STATES  # noqa: E402
from bench.common import start_agent  # noqa: E402

MODES = {"direct": "0", "fork": "1"}
CPU_ROWS = (
    "agent (own)",
    "agent's children (direct supervisors + jobs)",
    "fork server (own)",
    "fork server's children (forked supervisors + jobs)",
)
TRUE_JOB = {"overrides": {"entry_point": ["true"]}}


@contextmanager
def fork_server_mode(mode: str) -> Iterator[None]:
    old = os.environ.get(FORK_SERVER_SWITCH)
    os.environ[FORK_SERVER_SWITCH] = MODES[mode]
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(FORK_SERVER_SWITCH, None)
        else:
            os.environ[FORK_SERVER_SWITCH] = old


# -- 1. throughput ---------------------------------------------------------------------------


def drain(work: Path, jobs: int, max_jobs: int, mode: str) -> tuple[float, float]:
    """Jobs/s (first claim -> last finish) and the wall time including agent start/exit."""
    db_url = f"sqlite:///{work / 'drain.db'}"
    db = open_backend(db_url)
    ids = [db.push_to_run_queue("bench", TRUE_JOB) for _ in range(jobs)]
    began = time.monotonic()
    agent = start_agent(
        db_url,
        work / "data",
        "-q",
        "bench",
        "-j",
        str(max_jobs),
        "--exit-when-idle",
        env={FORK_SERVER_SWITCH: MODES[mode]},
    )
    cpu = watch_cpu(agent.pid, deadline=time.monotonic() + max(120, jobs))
    agent.wait(timeout=10)
    wall = time.monotonic() - began
    infos = [db.get_item(i) for i in ids]
    assert all(i is not None and i.state in TERMINAL_ITEM_STATES for i in infos)
    states = {i.state.value for i in infos if i is not None}
    assert states == {"FINISHED"}, states
    first = min(i.claimed_at for i in infos if i and i.claimed_at)
    last = max(i.finished_at for i in infos if i and i.finished_at)
    db.close()
    return jobs / (last - first), wall, {name: value / jobs * 1000 for name, value in cpu.items()}


def memory_drain(work: Path, jobs: int, max_jobs: int = 8) -> list[tuple[int, float]]:
    """A real agent draining `jobs` trivial items: (items ended, agent RSS in MB) about
    twice a second, from the first sample to the agent's exit."""
    db_url = f"sqlite:///{work / 'memory.db'}"
    db = open_backend(db_url)
    for _ in range(jobs):
        db.push_to_run_queue("bench", TRUE_JOB)
    agent = start_agent(
        db_url, work / "data", "-q", "bench", "-j", str(max_jobs), "--exit-when-idle"
    )
    samples: list[tuple[int, float]] = []
    while agent.poll() is None:
        rss = _rss_mb(agent.pid)
        summary = db.list_queues()
        ended = (
            sum(summary[0].counts.get(s.value, 0) for s in TERMINAL_ITEM_STATES) if summary else 0
        )
        if rss is not None:
            samples.append((ended, rss))
        time.sleep(0.5)
    db.close()
    return samples


def _rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def rss_growth(samples: list[tuple[int, float]], warm_up: int) -> tuple[float, float]:
    """RSS once `warm_up` items have ended (imports, pools and caches are in place by then),
    and its growth from there to the end (the largest later sample)."""
    later = [mb for ended, mb in samples if ended >= warm_up] or [samples[-1][1]]
    return later[0], max(later) - later[0]


def _stat(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].decode().split()


def watch_cpu(agent: int, deadline: float) -> dict[str, float]:
    """CPU seconds, seen last before each process ended: the agent's own, its reaped
    children's (direct supervisors and their jobs), the fork server's own and its reaped
    children's (forked supervisors and their jobs)."""
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[str, float] = {}
    servers: set[int] = set()
    while time.monotonic() < deadline:
        fields = _stat(agent)
        if fields is None or fields[0] == "Z":
            break
        seen["agent (own)"] = (int(fields[11]) + int(fields[12])) / tick
        seen["agent's children (direct supervisors + jobs)"] = (
            int(fields[13]) + int(fields[14])
        ) / tick
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"forkserver.py" in cmdline:
                    servers.add(int(child))
        own = reaped = 0.0
        for server in servers:
            got = _stat(server)
            if got is not None:
                own += (int(got[11]) + int(got[12])) / tick
                reaped += (int(got[13]) + int(got[14])) / tick
        if servers:
            seen["fork server (own)"] = max(own, seen.get("fork server (own)", 0.0))
            key = "fork server's children (forked supervisors + jobs)"
            seen[key] = max(reaped, seen.get(key, 0.0))
        time.sleep(0.02)
    return seen


# -- 2. per-job breakdown ----------------------------------------------------------------------


Timings = dict[str, list[float]]


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


async def spawn_alone(rounds: int) -> list[float]:
    took = []
    for _ in range(rounds):
        began = time.perf_counter()
        process = await asyncio.create_subprocess_exec("true")
        await process.wait()
        took.append(time.perf_counter() - began)
    return took


async def runner_alone(work: Path, rounds: int) -> Timings:
    """The runner's launch and wait for `true`, without an agent around it."""
    from agent_lib.runners.base import LaunchContext
    from agent_lib.runners.local_process import LocalProcessRunner
    from agent_lib.spec import LaunchSpec

    timings: Timings = defaultdict(list)
    for n in range(rounds + 1):
        job_dir = work / f"runner-{n}"
        context = LaunchContext(
            item_id=f"item{n}",
            queue="q",
            run_id=f"run{n}",
            spec=LaunchSpec(),
            command=["true"],
            image=None,
            env={"WANDB_RUN_ID": f"run{n}"},
            job_dir=job_dir,
            log_path=job_dir / "output.log",
            host_env={"PATH": os.environ["PATH"]},
        )
        began = time.perf_counter()
        run = await LocalProcessRunner().run(context)
        launched = time.perf_counter()
        await run.wait()
        if n:  # the first one also starts the fork server
            timings["runner launch (supervisor start + handshake)"].append(launched - began)
            timings["runner wait (job end recorded)"].append(time.perf_counter() - launched)
    return timings


def timed(timings: Timings, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if asyncio.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                timings[name].append(time.perf_counter() - began)

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[name].append(time.perf_counter() - began)

    return wrapper


def agent_in_process(work: Path, jobs: int, max_jobs: int) -> tuple[Timings, float]:
    """Drain `jobs` items with an agent in this process, timing backend calls and job steps."""
    from agent_lib.agent import LaunchAgent
    from agent_lib.backends import SqlBackend
    from agent_lib.config import AgentConfig
    from agent_lib.job import Job

    db_url = f"sqlite:///{work / 'breakdown.db'}"
    db = open_backend(db_url)
    for _ in range(jobs):
        db.push_to_run_queue("bench", TRUE_JOB)
    timings: Timings = defaultdict(list)
    for name in dir(SqlBackend):
        member = getattr(db, name, None)
        if not name.startswith("_") and callable(member) and name not in ("close",):
            setattr(db, name, timed(timings, f"backend {name}", member))
    saved = {}
    for step in ("_ack", "_launch", "_wait", "_settle", "run"):
        saved[step] = getattr(Job, step)
        setattr(Job, step, timed(timings, f"job step {step.lstrip('_')}", saved[step]))
    try:
        config = AgentConfig.load(
            queues=["bench"],
            max_jobs=max_jobs,
            exit_when_idle=True,
            data_dir=str(work / "agent-data"),
        )
        agent = LaunchAgent(db, config)
        began = time.monotonic()
        asyncio.run(agent.loop())
        took = time.monotonic() - began
    finally:
        for step, fn in saved.items():
            setattr(Job, step, fn)
        db.close()
    return timings, jobs / took


def breakdown(work: Path, jobs: int, max_jobs: int) -> dict[str, float]:
    rows: dict[str, float] = {}
    rows["spawn `true` alone (asyncio exec + wait)"] = median_ms(
        asyncio.run(spawn_alone(max(50, jobs // 4)))
    )
    for name, values in asyncio.run(runner_alone(work, max(50, jobs // 4))).items():
        rows[name] = median_ms(values)
    timings, rate = agent_in_process(work, jobs, max_jobs)
    for name in sorted(timings):
        if len(timings[name]) >= jobs // 2:  # per-job calls, not the loop's own
            rows[f"{name} (x{len(timings[name]) / jobs:.1f}/job)"] = median_ms(timings[name])
    rows[f"in-process agent, max_jobs {max_jobs}: jobs/s"] = rate
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--slots", default="1,8,32")
    parser.add_argument("--modes", default="direct,fork")
    parser.add_argument("--breakdown-jobs", type=int, default=200)
    parser.add_argument("--memory-jobs", type=int, default=0, help="RSS over this many jobs")
    args = parser.parse_args()
    modes = args.modes.split(",")
    slots = [int(s) for s in args.slots.split(",")]
    print(f"machine: {os.cpu_count()} cpus, python {sys.version.split()[0]}")
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for max_jobs in slots:  # rows in a fixed order, whichever mode fills them
        table[f"{args.jobs} `true` jobs, max_jobs {max_jobs}: jobs/s"] = {}
        for name in CPU_ROWS:
            table[f"  CPU ms/job at max_jobs {max_jobs}: {name}"] = {}
    for mode in modes:
        for max_jobs in slots:
            with tempfile.TemporaryDirectory() as tmp:
                rate, wall, cpu = drain(Path(tmp), args.jobs, max_jobs, mode)
            label = f"{args.jobs} `true` jobs, max_jobs {max_jobs}: jobs/s"
            table[label][mode] = rate
            print(f"  {mode:6} {label}: {rate:.1f} (wall {wall:.1f} s incl. agent start/exit)")
            for name in CPU_ROWS:
                if name in cpu:
                    table[f"  CPU ms/job at max_jobs {max_jobs}: {name}"][mode] = cpu[name]
    if args.memory_jobs:
        with tempfile.TemporaryDirectory() as tmp:
            samples = memory_drain(Path(tmp), args.memory_jobs)
        for ended, mb in samples[:: max(1, len(samples) // 20)] + samples[-1:]:
            print(f"  RSS after {ended:>6} jobs: {mb:.1f} MB")
        warm, growth = rss_growth(samples, args.memory_jobs // 100)
        print(f"  RSS {warm:.1f} MB once warm, grew {growth:+.1f} MB to the end")
    if args.breakdown_jobs:
        for mode in modes:
            with fork_server_mode(mode), tempfile.TemporaryDirectory() as tmp:
                for name, value in breakdown(Path(tmp), args.breakdown_jobs, 8).items():
                    table[f"{name}"][mode] = value
    width = max(len(name) for name in table)
    print()
    print("CPU ms/job includes the agent's start-up (~1 s of CPU) spread over the jobs.")
    print(f"{'per job (ms median) / throughput':{width}}  " + "  ".join(f"{m:>8}" for m in modes))
    for name, values in table.items():
        if not values:
            continue
        cells = "  ".join(f"{values.get(m, float('nan')):8.2f}" for m in modes)
        print(f"{name:{width}}  {cells}")


if __name__ == "__main__":
    main()
