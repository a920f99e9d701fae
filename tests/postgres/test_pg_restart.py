"""PostgreSQL restarted in the middle of a run: nothing lost, nothing launched twice."""

from __future__ import annotations

import os
import shutil
import subprocess
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
from tests.services import missing_service

pytestmark = pytest.mark.slow


def restart_postgres() -> None:
    version = os.environ.get("LAUNCH_AGENT_TEST_PG_VERSION", "15")
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        missing_service("restarting PostgreSQL needs root and pg_ctlcluster")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        timeout=120,
    )


def test_agents_survive_a_postgres_restart(pg_url: str, tmp_path: Path) -> None:
    trace = tmp_path / "launches.txt"
    db = open_db(pg_url)
    ids = [db.push_to_run_queue("work", counting_job(trace, sleep=0.5)) for _ in range(90)]
    agents = [
        start_agent(pg_url, tmp_path / f"agent{n}", "-q", "work", "-j", "3", lease_seconds="8")
        for n in range(3)
    ]
    try:
        wait_until(lambda: len(launches(trace)) >= 15, 90, "the agents to get going")
        before_restart = len(launches(trace))
        restart_postgres()
        wait_until(lambda: all_terminal(db, ids), 150, "every item to end after the restart")
    finally:
        stop(agents)
    counts = launches(trace)
    assert before_restart < len(ids) / 2, "the restart came too late to test anything"
    assert sorted(counts) == sorted(ids), "every item launched"
    assert set(counts.values()) == {1}, f"launched twice: {[i for i, n in counts.items() if n > 1]}"
    assert states(db, ids) == {ItemState.FINISHED: len(ids)}
    logs = "".join((tmp_path / f"agent{n}" / "agent.log").read_text() for n in range(3))
    assert "unreachable" in logs and "reachable again" in logs, "the agents said so"
    assert "postgres:postgres@" not in logs, "no password in the logs"
    db.close()
