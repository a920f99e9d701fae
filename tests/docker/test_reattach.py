"""Kill the agent (SIGKILL) while its containers run; a new agent finishes every job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_lib.states import ItemState
from tests.docker.conftest import Harness, sh

pytestmark = pytest.mark.timeout(150)

LAUNCH_AGENT = Path(sys.executable).parent / "launch-agent"
# A killed agent holds its items until it has been silent for its agent_timeout; a short
# one keeps this test quick.
AGENT_TIMEOUT = 2.0


def start_agent(harness: Harness, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LAUNCH_AGENT_POLL_INTERVAL": "0.02",
        "LAUNCH_AGENT_HEARTBEAT_INTERVAL": "0.1",
        "LAUNCH_AGENT_STOP_CHECK_INTERVAL": "0.05",
        "LAUNCH_AGENT_DEFAULT_RESOURCE": "local-container",
        "LAUNCH_AGENT_AGENT_TIMEOUT": str(AGENT_TIMEOUT),
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


def wait_running(harness: Harness, ids: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = {
            c.labels["launch-agent.item"] for c in harness.containers() if c.status == "running"
        }
        if running >= set(ids):
            return
        time.sleep(0.1)
    raise AssertionError(f"containers of {ids} not all running within {timeout}s")


def test_a_restarted_agent_re_attaches_and_finishes_every_job(
    harness: Harness, busybox: str, tmp_path: Path
) -> None:
    log = tmp_path / "agent.log"
    specs = {
        "finishes": sh(busybox, "echo first half; sleep 4; echo second half; exit 0"),
        "fails": sh(busybox, "echo failing soon; sleep 4; echo bye; exit 7"),
        # Ends while no agent runs: its exited container waits to be found.
        "ends_unwatched": sh(busybox, "echo quick; sleep 1; echo done quick; exit 5"),
    }
    ids = {name: harness.push(spec) for name, spec in specs.items()}
    first = start_agent(harness, log)
    try:
        wait_running(harness, list(ids.values()))
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert all(harness.item(i).state is ItemState.CLAIMED for i in ids.values())

    # Restarted at once: the dead agent still counts as alive for AGENT_TIMEOUT, so the new
    # one keeps looking at the strays on its ticks and adopts them once that has passed.
    second = start_agent(harness, log, "--exit-when-idle")
    try:
        infos = {n: i for n, i in zip(ids, harness.wait_ended(list(ids.values()), 60), strict=True)}
        assert second.wait(30) == 0
    finally:
        if second.poll() is None:
            second.kill()
    text = log.read_text()
    assert infos["finishes"].state is ItemState.FINISHED, text
    assert infos["finishes"].exit_code == 0
    assert infos["fails"].state is ItemState.FAILED and infos["fails"].failure_phase == "run"
    assert "exited with code 7" in (infos["fails"].failure_message or ""), text
    assert infos["ends_unwatched"].state is ItemState.FAILED
    assert "exited with code 5" in (infos["ends_unwatched"].failure_message or ""), text
    # Each job's whole output is in its log, and its container is gone.
    assert "first half" in harness.output(ids["finishes"])
    assert "second half" in harness.output(ids["finishes"])
    assert "bye" in harness.output(ids["fails"])
    assert "done quick" in harness.output(ids["ends_unwatched"])
    assert harness.containers() == []
