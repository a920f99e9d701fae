"""SIGKILL the agent at each point of a container job's life; its restart settles it once.

The container version of tests/test_crash_windows.py. The agent kills itself at a named
point (LAUNCH_AGENT_CRASH_AT, agent_lib.crashpoints), then starts again on the same data
dir: the same agent, one generation later, which takes back its item at once. Whatever the
window, exactly one container is ever started for the job (its ledger, in a bind-mounted
host folder, says so), the item ends with the outcome the job really had, and the container
is removed once the item is settled.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent_lib.backends import SqlBackend
from agent_lib.states import ItemState
from tests.docker.conftest import Harness, sh
from tests.helpers import start_agent_process

pytestmark = pytest.mark.timeout(240)

# Generous: a loaded 2-core machine can take a while to create and start a container.
AGENT_EXIT_TIMEOUT = 120.0


def ledger_job(image: str, shared: Path, code: int) -> dict[str, Any]:
    """A container job that notes its start and exit in `shared/ledger`, and prints a line."""
    shared.mkdir(parents=True, exist_ok=True)
    script = (
        'echo "start $WANDB_LAUNCH_TRACE_ID" >> /shared/ledger; sleep 1; '
        'echo "output of $WANDB_LAUNCH_TRACE_ID"; '
        'echo "exit $WANDB_LAUNCH_TRACE_ID" >> /shared/ledger; '
        f"exit {code}"
    )
    return sh(image, script, resource_args={"local-container": {"volume": [f"{shared}:/shared"]}})


def lines(shared: Path, kind: str, item_id: str) -> int:
    ledger = shared / "ledger"
    if not ledger.exists():
        return 0
    return sum(1 for line in ledger.read_text().splitlines() if line.split()[:2] == [kind, item_id])


def start_agent(harness: Harness, *args: str, crash_at: str = "") -> subprocess.Popen[bytes]:
    """`launch-agent run` on the harness's queue; volumes allowed (the ledger's folder)."""
    return start_agent_process(
        harness.db_url,
        harness.data_dir,
        "--queue",
        harness.queue,
        *args,
        container_allow=json.dumps(["volume"]),
        agent_timeout="60",
        crash_at=crash_at,
    )


def agent_log(harness: Harness) -> str:
    path = harness.data_dir / "agent.log"
    return path.read_text() if path.exists() else ""


def wait_exit(process: subprocess.Popen[bytes], harness: Harness) -> int:
    try:
        return process.wait(timeout=AGENT_EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise AssertionError(
            f"the agent did not exit within {AGENT_EXIT_TIMEOUT:.0f}s:\n{agent_log(harness)}"
        ) from None


def crash_then_restart(harness: Harness, item_id: str, point: str) -> ItemState:
    """Run an agent that dies at `point`, then restart it; return the state it left behind.

    Also checks the job's container: none before `launched`, one after (kept, since the
    item is not settled yet), and none once the restart has settled the item.
    """
    crashing = start_agent(harness, crash_at=point)
    code = wait_exit(crashing, harness)
    assert code == -signal.SIGKILL, f"the agent did not die at {point}:\n{agent_log(harness)}"
    left = harness.item(item_id).state
    containers = harness.containers(item=item_id)
    if point in ("popped", "acked"):
        assert containers == [], f"a container was started before {point} ended"
    else:
        assert len(containers) == 1, f"the job's container is not kept after {point}"

    restarted = start_agent(harness, "--exit-when-idle")
    assert wait_exit(restarted, harness) == 0, agent_log(harness)
    assert harness.containers() == [], "the job's container was not removed after settling"
    if point not in ("popped", "acked"):
        assert f"item {item_id}: re-attached" in agent_log(harness), "not re-attached"
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
def test_a_container_job_that_succeeds_runs_once_and_finishes(
    harness: Harness, busybox: str, tmp_path: Path, point: str, left_as: ItemState
) -> None:
    shared = tmp_path / "shared"
    item_id = harness.push(ledger_job(busybox, shared, 0))

    assert crash_then_restart(harness, item_id, point) is left_as

    info = harness.item(item_id)
    assert info.state is ItemState.FINISHED, (info, agent_log(harness))
    assert info.exit_code == 0
    assert lines(shared, "start", item_id) == 1, "not exactly one container was started"
    assert lines(shared, "exit", item_id) == 1
    assert isinstance(harness.db, SqlBackend)
    agents = harness.db.list_agents()
    assert len(agents) == 1, "the restart is the same agent"
    assert harness.db.get_launch_agent(agents[0].id).generation == 2


@pytest.mark.parametrize("point", ["launched", "ended", "reporting"])
def test_a_container_job_that_fails_is_reported_once_with_its_log(
    harness: Harness, busybox: str, tmp_path: Path, point: str
) -> None:
    shared = tmp_path / "shared"
    item_id = harness.push(ledger_job(busybox, shared, 3))

    assert crash_then_restart(harness, item_id, point) is ItemState.CLAIMED

    info = harness.item(item_id)
    assert info.state is ItemState.FAILED, (info, agent_log(harness))
    assert info.failure_phase == "run"
    assert info.exit_code == 3
    assert "exited with code 3" in (info.failure_message or "")
    assert any(f"output of {item_id}" in text for text in info.files.values()), info.files
    assert lines(shared, "start", item_id) == 1, "not exactly one container was started"
    assert lines(shared, "exit", item_id) == 1
    assert "taking back 1 item(s)" in agent_log(harness)
