"""A sweep's life with a real agent process: pause, resume, stop, cancel, and surviving its
agent's SIGKILL and its scheduler's preemption with no run lost or repeated."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

from agent_lib.backends import SqlBackend
from agent_lib.states import TERMINAL_ITEM_STATES, ItemState
from tests.helpers import start_agent_process, wait_for
from tests.sweeps.helpers import change, create_sweep, ledger, show, write_train


def run_states(backend: SqlBackend, sweep_id: str) -> list[str | None]:
    return [r.item_state for r in backend.sweep_runs(sweep_id)]


def all_runs_ended(backend: SqlBackend, sweep_id: str) -> bool:
    terminal = {s.value for s in TERMINAL_ITEM_STATES}
    return all(s in terminal for s in run_states(backend, sweep_id))


def item_ended(backend: SqlBackend, item_id: str) -> bool:
    info = backend.get_item(item_id)
    return info is not None and info.state in TERMINAL_ITEM_STATES


def test_pause_resume_and_stop(backend: SqlBackend, db_url: str, tmp_path: Path) -> None:
    config = {
        "method": "random",
        "metric": {"name": "loss"},
        "run_cap": 500,
        "parameters": {"x": {"min": -2.0, "max": 2.0}},
        "scheduler": {"num_workers": 2, "poll_interval": 0.02},
    }
    sweep_id = create_sweep(db_url, tmp_path, config, write_train(tmp_path))
    agent = start_agent_process(db_url, tmp_path / "agent", "-j", "2")
    try:
        wait_for(lambda: len(backend.sweep_runs(sweep_id)) >= 3, what="three runs")

        assert change(db_url, tmp_path, "pause", sweep_id)["state"] == "PAUSED"
        paused_at = len(backend.sweep_runs(sweep_id))
        wait_for(lambda: all_runs_ended(backend, sweep_id), what="the paused sweep's runs")
        # A run is pushed only in a transaction that sees the sweep RUNNING: none after.
        assert len(backend.sweep_runs(sweep_id)) == paused_at
        assert show(db_url, tmp_path, sweep_id)["state"] == "PAUSED"

        assert change(db_url, tmp_path, "resume", sweep_id)["state"] == "RUNNING"
        wait_for(lambda: len(backend.sweep_runs(sweep_id)) >= paused_at + 2, what="new runs")

        stopped = change(db_url, tmp_path, "stop", sweep_id)
        assert stopped["state"] == "FINISHED"
        data = show(db_url, tmp_path, sweep_id)
        wait_for(lambda: item_ended(backend, data["scheduler_item"]), what="the scheduler's end")
        wait_for(lambda: all_runs_ended(backend, sweep_id), what="the runs' end")
        scheduler = backend.get_item(data["scheduler_item"])
        assert scheduler is not None and scheduler.state is ItemState.FINISHED
        # Stopped: queued runs were dropped (STOPPED), running ones finished; none failed.
        assert set(run_states(backend, sweep_id)) <= {"FINISHED", "STOPPED"}
        assert len(ledger(tmp_path)) == sum(
            1 for s in run_states(backend, sweep_id) if s == "FINISHED"
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0


def test_cancel_stops_the_running_runs(backend: SqlBackend, db_url: str, tmp_path: Path) -> None:
    config = {
        "method": "grid",
        "metric": {"name": "loss"},
        "parameters": {"x": {"values": [0, 1, 2]}, "steps": {"value": 100},
                       "delay": {"value": 0.5}},
        "scheduler": {"num_workers": 3, "poll_interval": 0.02},
    }  # fmt: skip
    sweep_id = create_sweep(db_url, tmp_path, config, write_train(tmp_path))
    agent = start_agent_process(db_url, tmp_path / "agent", "-j", "3", "--exit-when-idle")
    try:
        wait_for(lambda: len(ledger(tmp_path)) == 3, what="three runs running")
        result = change(db_url, tmp_path, "cancel", sweep_id)
        assert result["state"] == "CANCELED" and result["stopped"] == 3
        assert agent.wait(timeout=60) == 0  # all ended: the agent was idle and exited
    finally:
        if agent.poll() is None:
            agent.kill()
    data = show(db_url, tmp_path, sweep_id)
    assert data["state"] == "CANCELED"
    assert run_states(backend, sweep_id) == ["STOPPED"] * 3
    scheduler = backend.get_item(data["scheduler_item"])
    assert scheduler is not None and scheduler.state is ItemState.FINISHED


def scheduler_pid(backend: SqlBackend, data_dir: Path, item_id: str) -> int:
    info = backend.get_item(item_id)
    assert info is not None and info.run_id is not None
    [folder] = (data_dir / "jobs").glob(f"{item_id}-{info.run_id}")
    return int(json.loads((folder / "supervisor" / "child.json").read_text())["pid"])


def test_a_sweep_survives_agent_sigkill_and_scheduler_preemption(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    """The agent is SIGKILLed mid-sweep and restarted (it re-attaches the scheduler and the
    runs); then the scheduler itself is preempted (SIGTERM from outside), requeued, and a new
    scheduler process resumes from the stored runs. The grid still runs exactly once."""
    points = [0, 1, 2, 3, 4, 5, 6, 7]
    config = {
        "method": "grid",
        "metric": {"name": "loss"},
        "parameters": {"x": {"values": points}, "steps": {"value": 3},
                       "delay": {"value": 0.15}},
        "scheduler": {"num_workers": 2, "poll_interval": 0.02},
    }  # fmt: skip
    sweep_id = create_sweep(db_url, tmp_path, config, write_train(tmp_path))
    data_dir = tmp_path / "agent"
    first_scheduler = show(db_url, tmp_path, sweep_id)["scheduler_item"]

    doomed = start_agent_process(db_url, data_dir, "-j", "2")
    wait_for(lambda: len(ledger(tmp_path)) >= 2, what="two runs started")
    doomed.kill()
    assert doomed.wait(timeout=30) == -signal.SIGKILL

    agent = start_agent_process(db_url, data_dir, "-j", "2", "--exit-when-idle")
    try:
        wait_for(lambda: len(ledger(tmp_path)) >= 4, what="runs after the restart")
        os.kill(scheduler_pid(backend, data_dir, first_scheduler), signal.SIGTERM)
        assert agent.wait(timeout=120) == 0
    finally:
        if agent.poll() is None:
            agent.kill()

    data = show(db_url, tmp_path, sweep_id)
    assert data["state"] == "FINISHED"
    first = backend.get_item(first_scheduler)
    assert first is not None and first.state is ItemState.PREEMPTED
    last = backend.get_item(data["scheduler_item"])
    assert data["scheduler_item"] != first_scheduler
    assert last is not None and last.state is ItemState.FINISHED
    started = Counter(run_id for run_id, _ in ledger(tmp_path))
    assert len(started) == 8 and set(started.values()) == {1}  # no run started twice
    assert sorted(cfg["x"] for _, cfg in ledger(tmp_path)) == points  # none lost or repeated
    assert [r["state"] for r in data["runs"]] == ["finished"] * 8
