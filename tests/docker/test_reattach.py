"""Kill the agent (SIGKILL) while its containers run; restarted at once, it finishes them.

Restarted on the same data dir, the agent is the same agent (generation + 1): it takes back
the items it held right away and re-attaches to their containers, those still running and
those that ended while no agent watched, without waiting for its agent_timeout to pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_lib.backends import SqlBackend
from agent_lib.states import ItemState
from tests.docker.conftest import Harness, sh

pytestmark = pytest.mark.timeout(180)

LAUNCH_AGENT = Path(sys.executable).parent / "launch-agent"
# Far longer than the whole restart may take: the restart must not wait for it (a dead
# agent still counts as alive for agent_timeout, so a new agent would have to).
AGENT_TIMEOUT = 600.0
# Each wait on the restarted agent; together well under AGENT_TIMEOUT and the test timeout.
WAIT = 60.0


def start_agent(harness: Harness, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LAUNCH_AGENT_POLL_INTERVAL": "0.02",
        "LAUNCH_AGENT_HEARTBEAT_INTERVAL": "0.1",
        "LAUNCH_AGENT_STOP_CHECK_INTERVAL": "0.05",
        "LAUNCH_AGENT_DEFAULT_RESOURCE": "local-container",
        "LAUNCH_AGENT_AGENT_TIMEOUT": str(AGENT_TIMEOUT),
        "LAUNCH_AGENT_CONTAINER_ALLOW": json.dumps(["volume"]),
    }
    command = [
        str(LAUNCH_AGENT),
        "run",
        "--backend",
        harness.db_url,
        "--data-dir",
        str(harness.data_dir),
        "--queue",
        harness.queue,
        "--max-jobs",
        "4",
        *extra,
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_until(
    predicate: Callable[[], object], what: str, log: Path, timeout: float = WAIT
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    text = log.read_text() if log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{text}")


def ledger_lines(shared: Path, kind: str, item_id: str) -> int:
    ledger = shared / "ledger"
    if not ledger.exists():
        return 0
    return sum(1 for line in ledger.read_text().splitlines() if line.split()[:2] == [kind, item_id])


def test_a_restarted_agent_re_attaches_at_once_and_finishes_every_job(
    harness: Harness, busybox: str, tmp_path: Path
) -> None:
    log = tmp_path / "agent.log"
    shared = tmp_path / "shared"
    shared.mkdir()
    mount = {"local-container": {"volume": [f"{shared}:/shared"]}}
    start = 'echo "start $WANDB_LAUNCH_TRACE_ID" >> /shared/ledger; '
    end = 'echo "exit $WANDB_LAUNCH_TRACE_ID" >> /shared/ledger; '
    # The long jobs run until the test lets them go: they surely outlive the first agent.
    gate = "while [ ! -e /shared/release ]; do sleep 0.1; done; "
    specs = {
        "finishes": f"{start}echo first half; {gate}echo second half; {end}exit 0",
        "fails": f"{start}echo failing soon; {gate}echo bye; {end}exit 7",
        # Ends while no agent runs: its exited container waits to be found.
        "ends_unwatched": f"{start}echo quick; sleep 1; echo done quick; {end}exit 5",
    }
    ids = {
        name: harness.push(sh(busybox, script, resource_args=mount))
        for name, script in specs.items()
    }
    all_ids = list(ids.values())

    first = start_agent(harness, log)
    try:
        wait_until(
            lambda: all(ledger_lines(shared, "start", i) for i in all_ids),
            "every job's container to start",
            log,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert all(harness.item(i).state is ItemState.CLAIMED for i in all_ids)
    wait_until(
        lambda: ledger_lines(shared, "exit", ids["ends_unwatched"]),
        "the quick job to end with no agent",
        log,
    )
    assert harness.item(ids["ends_unwatched"]).state is ItemState.CLAIMED

    # Restarted at once, with agent_timeout far off: it takes its items back on start.
    second = start_agent(harness, log, "--exit-when-idle")
    try:
        wait_until(
            lambda: all(f"item {i}: re-attached" in log.read_text() for i in all_ids),
            "the restarted agent to re-attach every job",
            log,
        )
        # The gated jobs were still running when re-attached; now let them end.
        assert ledger_lines(shared, "exit", ids["finishes"]) == 0
        assert ledger_lines(shared, "exit", ids["fails"]) == 0
        (shared / "release").touch()
        infos = dict(zip(ids, harness.wait_ended(all_ids, WAIT), strict=True))
        assert second.wait(WAIT) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)
    text = log.read_text()
    assert "taking back 3 item(s)" in text, text
    assert infos["finishes"].state is ItemState.FINISHED, text
    assert infos["finishes"].exit_code == 0
    assert infos["fails"].state is ItemState.FAILED and infos["fails"].failure_phase == "run"
    assert infos["fails"].exit_code == 7
    assert "exited with code 7" in (infos["fails"].failure_message or ""), text
    assert infos["ends_unwatched"].state is ItemState.FAILED
    assert infos["ends_unwatched"].failure_phase == "run"
    assert infos["ends_unwatched"].exit_code == 5
    assert "exited with code 5" in (infos["ends_unwatched"].failure_message or ""), text
    # Each job ran once, its whole output is in its log, and its container is gone.
    for item_id in all_ids:
        assert ledger_lines(shared, "start", item_id) == ledger_lines(shared, "exit", item_id) == 1
    assert "first half" in harness.output(ids["finishes"])
    assert "second half" in harness.output(ids["finishes"])
    assert "failing soon" in harness.output(ids["fails"])
    assert "bye" in harness.output(ids["fails"])
    assert "done quick" in harness.output(ids["ends_unwatched"])
    assert harness.containers() == []
    # The restart was the same agent, one generation later, not a new one.
    assert isinstance(harness.db, SqlBackend)
    agents = harness.db.list_agents()
    assert len(agents) == 1, agents
    assert harness.db.get_launch_agent(agents[0].id).generation == 2
