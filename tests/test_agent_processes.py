"""Agents as real processes on one SQLite file: exactly-once, leases, clean stops, secrets."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from agent_lib import ItemState
from agent_lib.backends import SqlBackend, open_backend
from tests.helpers import (
    all_ended,
    fast_config,
    read_records,
    record_job,
    run_agent,
    sh_job,
    start_agent_process,
    wait_for,
)


def test_two_agent_processes_launch_every_item_exactly_once(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    ids = [backend.push_to_run_queue("default", record_job(log)) for _ in range(40)]

    agents = [
        start_agent_process(db_url, tmp_path / f"agent{n}", "-j", "3", "--exit-when-idle")
        for n in range(2)
    ]
    for process in agents:
        assert process.wait(timeout=120) == 0

    starts = Counter(item for kind, _, item, _, _ in read_records(log) if kind == "start")
    assert set(starts) == set(ids)
    assert max(starts.values()) == 1
    assert {backend.get_item(i).state for i in ids} == {ItemState.FINISHED}  # type: ignore[union-attr]


def test_expired_lease_returns_the_item_and_the_old_holder_cannot_ack(
    db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    short = open_backend(db_url, lease_seconds=0.2)
    item_id = short.push_to_run_queue("default", record_job(log))
    stale_agent = short.create_launch_agent(None, "p", ["default"], "h", {}, "test")
    stale = short.pop_from_run_queue("default", None, "p", stale_agent)
    assert stale is not None and stale.item_id == item_id
    assert short.get_item(item_id).state is ItemState.LEASED  # type: ignore[union-attr]

    time.sleep(0.3)  # let the 0.2 s lease run out
    agent = run_agent(open_backend(db_url), fast_config(tmp_path, exit_when_idle=True))

    info = short.get_item(item_id)
    assert info is not None and info.state is ItemState.FINISHED
    assert info.attempts == 2
    assert info.agent_id == agent.id
    assert short.ack_run_queue_item(stale, "late-run") is None  # the first lease is gone
    assert len([r for r in read_records(log) if r[0] == "start"]) == 1


def test_stop_polling_stops_the_agent_cleanly_after_its_job(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    item_id = backend.push_to_run_queue("default", sh_job(f"touch {started}; sleep 1"))
    process = start_agent_process(db_url, tmp_path / "agent")
    wait_for(started.exists)
    [record] = backend.list_agents()

    assert backend.stop_agent(record.name)

    assert process.wait(timeout=30) == 0
    assert backend.get_launch_agent(record.id).status == "KILLED"
    assert backend.get_item(item_id).state is ItemState.FINISHED  # type: ignore[union-attr]
    assert not backend.list_items(states=[ItemState.LEASED, ItemState.CLAIMED])


def test_sigterm_lets_running_jobs_finish_then_exits_zero(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    running = backend.push_to_run_queue("default", sh_job(f"touch {started}; sleep 1"))
    process = start_agent_process(db_url, tmp_path / "agent")
    wait_for(started.exists)
    queued = backend.push_to_run_queue("default", sh_job("echo later"))

    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=30) == 0
    assert backend.get_item(running).state is ItemState.FINISHED  # type: ignore[union-attr]
    assert backend.get_item(queued).state is ItemState.PENDING  # type: ignore[union-attr]
    [record] = backend.list_agents()
    assert record.status == "KILLED"
    log = (tmp_path / "agent" / "agent.log").read_text()
    assert "SIGTERM: finishing running jobs" in log


def test_second_sigterm_cancels_and_requeues_jobs_to_resume(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    spec = sh_job(f"touch {started}; sleep 60") | {"run_id": "keepme01"}
    item_id = backend.push_to_run_queue("default", spec)
    process = start_agent_process(db_url, tmp_path / "agent")
    wait_for(started.exists)

    process.send_signal(signal.SIGTERM)
    wait_for(lambda: "finishing running jobs" in (tmp_path / "agent" / "agent.log").read_text())
    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=30) == 0
    assert backend.get_item(item_id).state is ItemState.PREEMPTED  # type: ignore[union-attr]
    [requeued] = backend.list_items(states=[ItemState.PENDING])
    assert requeued.run_spec["run_id"] == "keepme01"
    assert requeued.run_spec["_resume_count"] == 1
    assert requeued.queue == "default"


def test_secrets_never_reach_logs_messages_or_saved_files(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    secret = "sk-live-5ecr3t-abcdef123456"
    out = tmp_path / "job-saw-key"
    spec = sh_job(
        f'[ "$WANDB_API_KEY" = "{secret}" ] && touch {out}; echo "my key is $WANDB_API_KEY"; exit 1'
    ) | {"_wandb_api_key": secret}
    item_id = backend.push_to_run_queue("default", spec)

    process = start_agent_process(db_url, tmp_path / "agent", "--exit-when-idle", "-vv")
    assert process.wait(timeout=60) == 0

    assert out.exists()  # the job did get its key, by environment
    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FAILED
    saved = "".join(info.files.values())
    assert "my key is ***" in saved
    assert secret not in saved and secret not in (info.failure_message or "")
    agent_log = (tmp_path / "agent" / "agent.log").read_text()
    assert "received" in agent_log  # the spec was logged...
    assert secret not in agent_log  # ...without the key
    shown = subprocess.run(
        [sys.executable, "-m", "agent_lib.cli", "show", item_id, "--json", "--backend", db_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert secret not in shown


def test_all_items_end_when_many_agents_race(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    ids = [backend.push_to_run_queue("default", sh_job("true")) for _ in range(30)]
    agents = [
        start_agent_process(db_url, tmp_path / f"a{n}", "-j", "2", "--exit-when-idle")
        for n in range(3)
    ]
    for process in agents:
        assert process.wait(timeout=120) == 0
    assert all_ended(backend, ids)
    assert {backend.get_item(i).attempts for i in ids} == {1}  # type: ignore[union-attr]
