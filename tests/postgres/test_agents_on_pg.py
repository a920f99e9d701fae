"""Several agent processes on one PostgreSQL queue: every item launched exactly once.

Launches are counted by the jobs themselves (each appends its item id to a file), not by
the backend's bookkeeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent_lib.states import ItemState
from tests.postgres.procs import (
    all_terminal,
    counting_job,
    launches,
    open_db,
    start_agent,
    states,
    stop,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_agents_drain_a_queue_each_item_launched_once(pg_url: str, tmp_path: Path) -> None:
    trace = tmp_path / "launches.txt"
    db = open_db(pg_url)
    ids = [db.push_to_run_queue("work", counting_job(trace)) for _ in range(240)]
    agents = [
        start_agent(pg_url, tmp_path / f"agent{n}", "-q", "work", "-j", "4", "--exit-when-idle")
        for n in range(3)
    ]
    try:
        for proc in agents:
            assert proc.wait(150) == 0
    finally:
        stop(agents)
    counts = launches(trace)
    assert sorted(counts) == sorted(ids), "every item launched"
    assert set(counts.values()) == {1}, f"launched twice: {[i for i, n in counts.items() if n > 1]}"
    assert states(db, ids) == {ItemState.FINISHED: len(ids)}
    db.close()


def test_idle_agent_wakes_on_notify_not_on_its_poll(pg_url: str, tmp_path: Path) -> None:
    trace = tmp_path / "launches.txt"
    db = open_db(pg_url)
    agent = start_agent(pg_url, tmp_path / "agent", "-q", "work", poll_interval="120")
    try:
        wait_until(db.list_agents, 30, "the agent to register")
        time.sleep(1.0)  # let it go idle on its 120 s poll
        item = db.push_to_run_queue("work", counting_job(trace))
        wait_until(lambda: launches(trace)[item] == 1, 30, "the job to start (NOTIFY)")
    finally:
        stop([agent])
    db.close()


KILLED_AGENT = textwrap.dedent(
    """
    import sys, time
    from agent_lib.backends.sql import SqlBackend
    from agent_lib.backends.sql_url import sqlalchemy_url
    db = SqlBackend(sqlalchemy_url(sys.argv[1]), lease_seconds=600)
    me = db.create_launch_agent(None, "p", ["work"], "doomed", {"agent_timeout": 2}, "t")
    items = [db.pop_from_run_queue("work", None, "p", me, 1) for _ in range(6)]
    assert db.ack_run_queue_item(items[0], "run-of-the-dead")
    print(items[0].item_id, flush=True)
    time.sleep(600)
    """
)


def test_killed_agents_items_are_taken_over(pg_url: str, tmp_path: Path) -> None:
    """Leased items of a SIGKILLed agent run elsewhere; its launched one is FAILED (agent)."""
    trace = tmp_path / "launches.txt"
    db = open_db(pg_url)
    ids = [db.push_to_run_queue("work", counting_job(trace)) for _ in range(6)]
    doomed = subprocess.Popen(
        [sys.executable, "-c", KILLED_AGENT, pg_url], stdout=subprocess.PIPE, cwd=tmp_path
    )
    assert doomed.stdout is not None
    claimed = doomed.stdout.readline().decode().strip()
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    assert states(db, ids) == {ItemState.LEASED: 5, ItemState.CLAIMED: 1}
    rescuer = start_agent(
        pg_url,
        tmp_path / "rescuer",
        "-q",
        "work",
        "-j",
        "2",
        agent_timeout="2",
        lease_seconds="600",
    )
    try:
        wait_until(lambda: all_terminal(db, ids), 60, "the lost agent's items to be settled")
    finally:
        stop([rescuer])
    counts = launches(trace)
    assert sorted(counts) == sorted(i for i in ids if i != claimed)
    assert set(counts.values()) == {1}
    info = db.get_item(claimed)
    assert info is not None and info.state is ItemState.FAILED
    assert info.failure_phase == "agent" and "was lost" in (info.failure_message or "")
    assert db.get_launch_agent(info.agent_id or "").status == "LOST"
    db.close()
