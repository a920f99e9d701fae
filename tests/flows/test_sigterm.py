"""SIGTERM to an in-process `launch-agent-flow` stops it cleanly, idle or busy: exit 0, the
running job requeued (on_cancel requeue) with its process gone, the agent KILLED."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent_lib.backends import SqlBackend
from agent_lib.states import AgentStatus, ItemState
from tests.helpers import REPO, alive, sh_job, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def flow_process(api_url: str, db_url: str, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "LAUNCH_AGENT_DATA_DIR": str(data_dir),
        "LAUNCH_AGENT_POLL_INTERVAL": "0.05",
        "LAUNCH_AGENT_CANCEL_GRACE": "2",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flows", "sig", "--backend", db_url],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )


@pytest.mark.parametrize("busy", [True, False])
def test_sigterm_stops_the_flow_agent_cleanly(
    prefect_server: str, backend: SqlBackend, db_url: str, tmp_path: Path, busy: bool
) -> None:
    pids = tmp_path / "pids"
    log = tmp_path / "flow.log"
    item_id = (
        backend.push_to_run_queue("sig", sh_job(f"echo $$ >> {pids}; sleep 120")) if busy else None
    )
    process = flow_process(prefect_server, db_url, tmp_path / "data", log)
    try:
        if busy:
            pid = int(wait_for(lambda: pids.exists() and pids.read_text().strip(), 120, what="job"))
        else:
            wait_for(lambda: backend.list_agents(), 120, what="the agent to register")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    [agent] = backend.list_agents()
    assert agent.status == AgentStatus.KILLED
    if busy:
        assert not alive(pid)
        first = backend.get_item(item_id)  # type: ignore[arg-type]
        assert first is not None and first.state is ItemState.PREEMPTED
        [resumed] = [i for i in backend.list_items() if i.id != item_id]
        assert resumed.state is ItemState.PENDING
    assert "Traceback" not in log.read_text()
