"""Cancel the agent's run from Prefect (as the UI does) while it serves a busy agent under
`python -m deployments.serve`: Prefect's runner tears the run down (SIGTERM, its own
handlers in every subflow), and still no job is left behind and no item is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.states import Cancelling

from agent_lib.backends import SqlBackend
from agent_lib.states import AgentStatus, ItemState
from tests.helpers import REPO, alive, sh_job, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def serve(
    api_url: str, db_url: str, data_dir: Path, queue: str, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "LAUNCH_AGENT_DATA_DIR": str(data_dir),
        "LAUNCH_AGENT_POLL_INTERVAL": "0.05",
        "LAUNCH_AGENT_CANCEL_GRACE": "2",
    }
    command = [
        sys.executable,
        "-m",
        "deployments.serve",
        "--queues",
        queue,
        "--backend-url",
        db_url,
    ]
    with log.open("ab") as out:
        return subprocess.Popen([*command, "--no-start"], cwd=REPO, env=env, stdout=out, stderr=out)


async def start_agent_run() -> UUID:
    async with get_client() as client:
        for _ in range(300):  # the deployment appears once serve has registered it
            try:
                deployment = await client.read_deployment_by_name("launch-agent/agent")
                break
            except Exception:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError("the agent deployment never appeared")
        run = await client.create_flow_run_from_deployment(deployment.id)
        return run.id


async def state_of(run_id: UUID) -> Any:
    async with get_client() as client:
        return (await client.read_flow_run(run_id)).state


def test_cancelling_a_served_agent_requeues_its_running_job(
    prefect_server: str, backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    item_id = backend.push_to_run_queue("served", sh_job(f"echo $$ >> {pids}; sleep 120"))
    server = serve(prefect_server, db_url, tmp_path / "data", "served", tmp_path / "serve.log")
    try:
        run_id = asyncio.run(start_agent_run())
        pid = int(wait_for(lambda: pids.exists() and pids.read_text().strip(), 120, what="job"))

        async def cancel() -> None:
            async with get_client() as client:
                await client.set_flow_run_state(run_id, Cancelling(message="cancelled by a test"))

        asyncio.run(cancel())

        wait_for(lambda: not alive(pid), 60, what="the job's process to end")
        final = wait_for(
            lambda: (s := asyncio.run(state_of(run_id))) is not None and s.is_final() and s,
            90,
            what="the agent's run to end",
        )
        assert final.is_cancelled(), final
        first = backend.get_item(item_id)
        assert first is not None and first.state is ItemState.PREEMPTED, first
        [resumed] = [i for i in backend.list_items() if i.id != item_id]
        assert resumed.state is ItemState.PENDING and resumed.run_spec["_resume_count"] == 1
        [agent] = backend.list_agents()
        assert agent.status == AgentStatus.KILLED
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
