"""PostgreSQL backend benchmarks (not tests): pop throughput and push-to-start latency.

Usage (PostgreSQL from `eval "$(scripts/services)"`):
    .venv/bin/python bench/bench_pg.py [--items 3000] [--procs 1,4,8] [--samples 15]

1. Pops per second with 1, 4 and 8 agent processes: each process registers as an agent and
   loops pop -> ack -> complete (the backend's share of one job) until the queue is empty;
   beside it, the floor: the same processes doing only three one-row UPDATE commits per item
   with raw psycopg (what the server, its fsync and the 2 cores allow).
2. Push-to-start latency of an idle agent (a real LaunchAgent in its own process, running
   `true` jobs): with LISTEN/NOTIFY, and with polling only (`listen=False`) at a 1 s and
   the default 0.1 s poll interval. Latency = item claimed_at - created_at.
Each run uses a fresh database, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_lib.backends.sql import SqlBackend
from agent_lib.backends.sql_url import sqlalchemy_url
from agent_lib.states import ItemState

ADMIN = os.environ.get(
    "LAUNCH_AGENT_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)


def fresh_db() -> str:
    name = f"la_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_db(url: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def drain(url: str, start: multiprocessing.synchronize.Event) -> int:  # type: ignore[name-defined]
    db = SqlBackend(sqlalchemy_url(url), listen=False)
    me = db.create_launch_agent(None, "bench", ["q"], "bench", {}, "bench")
    start.wait()
    done = 0
    while (lease := db.pop_from_run_queue("q", None, "bench", me, 1)) is not None:
        claimed = db.ack_run_queue_item(lease, f"r{lease.item_id}")
        assert claimed is not None
        db.complete_run_queue_item(claimed, ItemState.FINISHED, 0)
        done += 1
    db.close()
    return done


def bench_pops(procs: int, items: int) -> float:
    url = fresh_db()
    try:
        db = SqlBackend(sqlalchemy_url(url), listen=False)
        for _ in range(items):
            db.push_to_run_queue("q", {"job": "noop"})
        db.close()
        ctx = multiprocessing.get_context("spawn")
        start = ctx.Manager().Event()
        with ctx.Pool(procs) as pool:
            results = [pool.apply_async(drain, (url, start)) for _ in range(procs)]
            time.sleep(1.0 + 0.3 * procs)  # let every process connect and register
            began = time.perf_counter()
            start.set()
            total = sum(r.get(600) for r in results)
            took = time.perf_counter() - began
        assert total == items, f"{total} != {items}"
        return items / took
    finally:
        drop_db(url)


def commit_three(url: str, rows: int, start: multiprocessing.synchronize.Event) -> int:  # type: ignore[name-defined]
    """Child: `rows` times, three single-row UPDATEs each in its own transaction (as a
    job's lease, claim and settle are), with raw psycopg: the server's and fsync's floor."""
    with psycopg.connect(url) as conn:
        mine = os.getpid()
        conn.execute("INSERT INTO floor VALUES (%s, 0) ON CONFLICT DO NOTHING", (mine,))
        conn.commit()
        start.wait()
        for _ in range(rows * 3):
            conn.execute("UPDATE floor SET n = n + 1 WHERE id = %s", (mine,))
            conn.commit()
    return rows


def commit_floor(procs: int, items: int) -> float:
    """Items/s if each cost only its three commits, across `procs` processes."""
    url = fresh_db()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE floor (id BIGINT PRIMARY KEY, n BIGINT)")
        ctx = multiprocessing.get_context("spawn")
        start = ctx.Manager().Event()
        with ctx.Pool(procs) as pool:
            results = [
                pool.apply_async(commit_three, (url, items // procs, start)) for _ in range(procs)
            ]
            time.sleep(1.0 + 0.3 * procs)
            began = time.perf_counter()
            start.set()
            total = sum(r.get(600) for r in results)
            took = time.perf_counter() - began
        return total / took
    finally:
        drop_db(url)


def run_agent(url: str, listen: bool, poll: float) -> None:
    """Child mode: one real LaunchAgent, serving queue `q` until killed."""
    from agent_lib import AgentConfig, LaunchAgent

    db = SqlBackend(sqlalchemy_url(url), listen=listen)
    config = AgentConfig.load(
        None, queues=["q"], poll_interval=poll, max_jobs=4, data_dir=Path(url.rsplit("/")[-1])
    )
    asyncio.run(LaunchAgent(db, config).loop())


def bench_latency(listen: bool, poll: float, samples: int, tmp: Path) -> list[float]:
    url = fresh_db()
    proc = subprocess.Popen(
        [sys.executable, __file__, "_agent", url, "1" if listen else "0", str(poll)],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        db = SqlBackend(sqlalchemy_url(url), listen=False)
        while not db.list_agents():
            time.sleep(0.1)
        time.sleep(1.5)
        latencies = []
        for _ in range(samples):
            time.sleep(random.uniform(0.3, 1.2))  # arrive at a random point of the poll
            item = db.push_to_run_queue("q", {"overrides": {"entry_point": ["true"]}})
            while (info := db.get_item(item)) is None or info.claimed_at is None:
                time.sleep(0.002)
            latencies.append(info.claimed_at - info.created_at)
        db.close()
        return latencies
    finally:
        proc.terminate()
        proc.wait(30)
        drop_db(url)


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"median {statistics.median(values) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_agent":
        run_agent(sys.argv[2], sys.argv[3] == "1", float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--procs", default="1,4,8")
    parser.add_argument("--samples", type=int, default=15)
    args = parser.parse_args()
    print(f"PostgreSQL {ADMIN.split('@')[-1]}, {os.cpu_count()} CPUs")
    for procs in [int(p) for p in args.procs.split(",")]:
        rate = bench_pops(procs, args.items)
        floor = commit_floor(procs, args.items)
        print(
            f"pop+ack+complete, {procs} agent process(es): {rate:8.0f} items/s "
            f"(three bare commits per item: {floor:8.0f}/s)"
        )
    tmp = Path("/tmp") / f"bench-pg-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    for label, listen, poll in [
        ("LISTEN/NOTIFY (poll 60 s)", True, 60.0),
        ("polling only, poll 1 s", False, 1.0),
        ("polling only, poll 0.1 s", False, 0.1),
    ]:
        print(
            f"push-to-start, idle agent, {label:26s}: "
            f"{summary(bench_latency(listen, poll, args.samples, tmp))}"
        )


if __name__ == "__main__":
    main()
