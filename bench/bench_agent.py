"""Benchmarks of the plain agent (no Prefect) on the embedded SQLite queue.

Measures, with the agent as a real `launch-agent run` process and default settings:
  1. push -> job start on an idle agent (the job stamps its own start time);
  2. job exit -> next job start with max_jobs 1 (slot reuse);
  3. time to drain 20 trivial jobs with max_jobs 4.
Run: .venv/bin/python bench/bench_agent.py [--rounds N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: make `bench` importable

from agent_lib.backends import SqlBackend, open_backend  # noqa: E402
from agent_lib.states import TERMINAL_ITEM_STATES  # noqa: E402
from bench.common import latency_summary, start_agent  # noqa: E402

STAMP = 'date +%s.%N >> "$0"'


def stamp_job(path: Path, script: str = STAMP) -> dict[str, object]:
    return {"overrides": {"entry_point": ["sh", "-c", script, str(path)]}}


def wait_lines(path: Path, count: int, timeout: float = 30) -> list[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().split()
            if len(lines) >= count:
                return [float(x) for x in lines]
        time.sleep(0.001)
    raise TimeoutError(f"{path}: fewer than {count} stamps after {timeout}s")


def wait_idle() -> None:
    """Let the agent settle into polling, then push at a random point of its poll cycle
    (a fixed pause would phase-lock pushes to the cycle and flatter the latency)."""
    time.sleep(0.5 + random.uniform(0.0, 0.1))


def push_to_start(db: SqlBackend, work: Path, rounds: int) -> list[float]:
    latencies = []
    for n in range(rounds):
        out = work / f"start-{n}"
        wait_idle()
        pushed = time.time()
        db.push_to_run_queue("bench", stamp_job(out))
        [started] = wait_lines(out, 1)
        latencies.append(started - pushed)
    return latencies


def slot_reuse(db: SqlBackend, work: Path, rounds: int) -> list[float]:
    gaps = []
    for n in range(rounds):
        out = work / f"reuse-{n}"
        wait_idle()
        db.push_to_run_queue("bench", stamp_job(out, 'sleep 0.2; date +%s.%N >> "$0"'))
        db.push_to_run_queue("bench", stamp_job(out))
        first_end, second_start = wait_lines(out, 2)
        gaps.append(second_start - first_end)
    return gaps


def drain(work: Path, jobs: int, max_jobs: int) -> tuple[float, float]:
    db_url = f"sqlite:///{work / 'drain.db'}"
    db = open_backend(db_url)
    ids = [
        db.push_to_run_queue("bench", {"overrides": {"entry_point": ["true"]}}) for _ in range(jobs)
    ]
    began = time.monotonic()
    agent = start_agent(
        db_url, work / "drain", "-q", "bench", "-j", str(max_jobs), "--exit-when-idle"
    )
    agent.wait(timeout=120)
    wall = time.monotonic() - began
    infos = [db.get_item(i) for i in ids]
    assert all(i is not None and i.state in TERMINAL_ITEM_STATES for i in infos)
    first = min(i.claimed_at for i in infos if i and i.claimed_at)
    last = max(i.finished_at for i in infos if i and i.finished_at)
    return last - first, wall


def idle_agent_latencies(work: Path, rounds: int) -> tuple[list[float], list[float]]:
    """(push -> job start, job exit -> next job start) for an idle `launch-agent run`."""
    db_url = f"sqlite:///{work / 'queue.db'}"
    db = open_backend(db_url)
    agent = start_agent(db_url, work / "agent", "-q", "bench")
    try:
        time.sleep(1.0)
        return push_to_start(db, work, rounds), slot_reuse(db, work, rounds)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started, reused = idle_agent_latencies(work, args.rounds)
        print(latency_summary("push -> job start (idle agent, woken by the push)", started))
        print(latency_summary("job exit -> next job start (max_jobs 1)", reused))
        span, wall = drain(work, 20, 4)
        print(
            f"drain 20 trivial jobs, max_jobs 4: {span:.2f} s first claim -> last finish, "
            f"{wall:.2f} s including agent start-up and exit"
        )


if __name__ == "__main__":
    main()
