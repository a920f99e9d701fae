"""SIGKILL the agent at each point of a job's life; its restart settles the item truly, once.

The agent kills itself at a named point (LAUNCH_AGENT_CRASH_AT, agent_lib.crashpoints),
then starts again on the same data dir: the same agent, one generation later. Whatever the
window, the job runs exactly once and the item ends with the outcome the job really had.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from agent_lib import ItemState
from agent_lib.backends import SqlBackend
from tests.chaos import ledger_job
from tests.helpers import start_agent_process, wait_for

pytestmark = pytest.mark.timeout(120)


def lines(ledger: Path, kind: str, item_id: str) -> int:
    if not ledger.exists():
        return 0
    return sum(1 for line in ledger.read_text().splitlines() if line.split()[:2] == [kind, item_id])


def crash_then_restart(backend: SqlBackend, db_url: str, data_dir: Path, point: str) -> ItemState:
    """Run an agent that dies at `point`; return the item's state it left behind."""
    crashing = start_agent_process(db_url, data_dir, crash_at=point)
    assert crashing.wait(timeout=60) == -signal.SIGKILL, "the agent did not die at " + point
    states = {i.state for i in backend.list_items()}
    assert len(states) == 1
    [left] = states
    restarted = start_agent_process(db_url, data_dir, "--exit-when-idle")
    assert restarted.wait(timeout=60) == 0
    return left


@pytest.mark.parametrize(
    ("point", "left_as"),
    [
        ("popped", ItemState.LEASED),
        ("acked", ItemState.CLAIMED),
        ("launched", ItemState.CLAIMED),
        ("ended", ItemState.CLAIMED),
    ],
)
def test_a_job_that_succeeds_runs_once_and_finishes(
    backend: SqlBackend, db_url: str, tmp_path: Path, point: str, left_as: ItemState
) -> None:
    ledger = tmp_path / "ledger"
    item_id = backend.push_to_run_queue("default", ledger_job(ledger, 0.5, 0))

    assert crash_then_restart(backend, db_url, tmp_path / "agent", point) is left_as

    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FINISHED, info
    assert info.exit_code == 0
    assert lines(ledger, "start", item_id) == 1
    assert lines(ledger, "exit", item_id) == 1


@pytest.mark.parametrize("point", ["launched", "ended", "reporting"])
def test_a_job_that_fails_is_reported_once_with_its_log(
    backend: SqlBackend, db_url: str, tmp_path: Path, point: str
) -> None:
    ledger = tmp_path / "ledger"
    item_id = backend.push_to_run_queue("default", ledger_job(ledger, 0.5, 3))

    assert crash_then_restart(backend, db_url, tmp_path / "agent", point) is ItemState.CLAIMED

    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FAILED, info
    assert info.failure_phase == "run"
    assert info.exit_code == 3
    assert "exited with code 3" in (info.failure_message or "")
    assert any(f"output of {item_id}" in text for text in info.files.values())
    assert lines(ledger, "start", item_id) == 1


def test_the_job_outlives_its_agent_and_is_re_attached_while_running(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    """Killed mid-job and restarted at once: the restart does not wait for agent_timeout."""
    ledger = tmp_path / "ledger"
    item_id = backend.push_to_run_queue("default", ledger_job(ledger, 3, 0))
    data_dir = tmp_path / "agent"
    first = start_agent_process(db_url, data_dir)
    wait_for(lambda: lines(ledger, "start", item_id), what="the job's start")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert lines(ledger, "exit", item_id) == 0  # still running, without its agent

    second = start_agent_process(db_url, data_dir, "--exit-when-idle")
    assert second.wait(timeout=60) == 0

    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FINISHED
    assert lines(ledger, "start", item_id) == lines(ledger, "exit", item_id) == 1
    agents = backend.list_agents()
    assert len(agents) == 1, "the restart is the same agent"
    assert backend.get_launch_agent(agents[0].id).generation == 2
    assert "taking back 1 item(s)" in (data_dir / "agent.log").read_text()


def test_a_host_cut_off_past_its_timeout_stops_its_copy_once_back(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    """`on_agent_lost: requeue`: the job resumes elsewhere; the returning agent stops its copy."""
    ledger = tmp_path / "ledger"
    item_id = backend.push_to_run_queue("default", ledger_job(ledger, 30, 0))
    settings = {"agent_timeout": "1", "on_agent_lost": "requeue"}
    cut_off = start_agent_process(db_url, tmp_path / "a", **settings)
    wait_for(lambda: lines(ledger, "start", item_id), what="the job's start")
    first_pid = int(next(ln.split()[2] for ln in ledger.read_text().splitlines()))
    cut_off.send_signal(signal.SIGSTOP)  # alive, but silent: as if its network went away
    rescuer = start_agent_process(db_url, tmp_path / "b", **settings)
    try:
        resumed = wait_for(
            lambda: [i for i in backend.list_items() if i.id != item_id], what="the resume item"
        )[0]
        assert resumed.run_spec["_resume_count"] == 1
        cut_off.send_signal(signal.SIGCONT)
        wait_for(lambda: not Path(f"/proc/{first_pid}").exists(), what="the copy to stop")
        info = backend.get_item(item_id)
        assert info is not None and info.state is ItemState.PREEMPTED
        wait_for(lambda: lines(ledger, "start", resumed.id), what="the resumed job's start")
        assert lines(ledger, "start", item_id) == 1
    finally:
        for process in (cut_off, rescuer):
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGTERM)  # a second one cancels its jobs
            process.wait(timeout=60)
