"""A killed agent is detected by Prefect's own heartbeats and automations, not by a lease.

`python -m deployments.serve` runs as a real process group against the test server; the
group is SIGKILLed while its agent run is Running (its machine lost, say). The crash
automation sets the run to Crashed once its heartbeats stop, which frees the one-agent
concurrency slot, and the restart automation plus a new serve process start a new agent.
Prefect's shortest heartbeat period is 30 s, so this test takes about a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling

from tests.helpers import PYTHON, REPO, wait_for

pytestmark = [pytest.mark.slow]

CRASH_AFTER = 40  # Prefect's heartbeat period is at least 30 s
AUTOMATION_PREFIXES = ("launch-agent/agent:", "drain/drain:")


async def agent_runs() -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["agent"]))
        )


def runs() -> list[FlowRun]:
    return asyncio.run(agent_runs())


def running(exclude: set[UUID]) -> FlowRun | None:
    for run in runs():
        if run.id not in exclude and run.state_type is StateType.RUNNING:
            return run
    return None


def state_of(run_id: UUID) -> StateType | None:
    return next((r.state_type for r in runs() if r.id == run_id), None)


async def cancel_active_runs() -> None:
    """Cancel the running agent (as the UI does: the runner stops it); drop waiting ones."""
    async with get_client() as client:
        for run in await agent_runs():
            if run.state is None or run.state.is_final():
                continue
            if run.state_type is StateType.RUNNING:
                await client.set_flow_run_state(run.id, Cancelling())
            else:
                await client.delete_flow_run(run.id)


async def force_cancel_active_runs() -> None:
    """Set every unfinished agent run Cancelled at once (cleanup, not under test)."""
    async with get_client() as client:
        for run in await agent_runs():
            if run.state is not None and not run.state.is_final():
                await client.set_flow_run_state(run.id, Cancelled(), force=True)


async def delete_automations_and_deployments() -> None:
    """No automation, deployment, run or concurrency slot of this test outlives it."""
    async with get_client() as client:
        for automation in await client.read_automations():
            if automation.name.startswith(AUTOMATION_PREFIXES):
                await client.delete_automation(automation.id)
        for name in ("launch-agent/agent", "drain/drain", "submit/submit"):
            with contextlib.suppress(ObjectNotFound):
                deployment = await client.read_deployment_by_name(name)
                await client.delete_deployment(deployment.id)


@contextlib.contextmanager
def serving(api_url: str, db_url: str, data_dir: Path, log: Path) -> Iterator[Any]:
    """`python -m deployments.serve` in its own process group; the group is ended after."""
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        "LAUNCH_AGENT_DATA_DIR": str(data_dir),
        "LAUNCH_AGENT_POLL_INTERVAL": "0.2",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                *(PYTHON, "-m", "deployments.serve", "--backend-url", db_url),
                *("--queues", "crash", "--crash-after", str(CRASH_AFTER)),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_killed_agent_is_crashed_and_replaced(
    prefect_server: str, db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    try:
        with serving(prefect_server, db_url, tmp_path / "data", log) as first:
            run = wait_for(
                lambda: running(set()), timeout=120, interval=0.5, what="an agent run Running"
            )
            # The serve process and its flow run's process: all gone at once, no goodbye.
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        assert state_of(run.id) is StateType.RUNNING  # nobody told Prefect

        wait_for(
            lambda: state_of(run.id) is StateType.CRASHED,
            timeout=CRASH_AFTER + 120,
            interval=1,
            what=f"the killed run to be Crashed (serve log: {log})",
        )
        with serving(prefect_server, db_url, tmp_path / "data", log):
            wait_for(
                lambda: running({run.id}),
                timeout=120,
                interval=0.5,
                what=f"a new agent run Running (serve log: {log})",
            )
            # No noise: at most one run dropped, if the restart automation and the new
            # serve process both started one.
            states = [r.state_type for r in runs() if r.id != run.id]
            assert states.count(StateType.CANCELLED) <= 1, states
            # Leave no agent run holding the deployment's slot for the tests that follow.
            asyncio.run(cancel_active_runs())
            try:
                wait_for(
                    lambda: all(r.state is not None and r.state.is_final() for r in runs()),
                    timeout=60,
                    interval=0.5,
                    what="the agent runs to end",
                )
            except AssertionError:  # cleanup only: end what the runner did not, by force
                asyncio.run(force_cancel_active_runs())
    finally:
        asyncio.run(delete_automations_and_deployments())
