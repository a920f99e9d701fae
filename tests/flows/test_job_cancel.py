"""Cancelling one job's subflow run (the UI's Cancel button on it) stops that job: its
process ends, its item is STOPPED, its run ends Cancelled, and the agent goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Cancelling

from agent_lib.backends import SqlBackend
from agent_lib.states import ItemState
from flows import drain
from tests.flows.prefect_reads import subflow_runs
from tests.helpers import alive, sh_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180), pytest.mark.usefixtures("prefect_server")]


async def until(predicate: Any, timeout: float = 60) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def test_cancelling_one_job_run_stops_that_job(
    backend: SqlBackend, flow_settings: dict[str, Any], tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    doomed = backend.push_to_run_queue("qj", sh_job(f"echo $$ >> {pids}; sleep 120"))
    other = backend.push_to_run_queue("qj", sh_job("sleep 2; echo other done"))

    async def scenario() -> Any:
        agent = asyncio.create_task(
            drain(**flow_settings, queues=["qj"], max_jobs=2, return_state=True)
        )  # type: ignore[arg-type]

        async def job_run() -> Any:
            if not pids.exists():
                return None
            async with get_client() as client:
                newest = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
                return _by_item(newest, doomed)

        run = await until(job_run)
        async with get_client() as client:
            await client.set_flow_run_state(run.id, Cancelling(message="cancelled in the UI"))
        state = await asyncio.wait_for(agent, 120)
        return state, run.id

    state, run_id = asyncio.run(scenario())

    assert state.is_completed(), state
    info = backend.get_item(doomed)
    assert info is not None and info.state is ItemState.STOPPED
    assert backend.get_item(other).state is ItemState.FINISHED  # type: ignore[union-attr]
    assert not alive(int(pids.read_text().split()[0]))
    runs = asyncio.run(subflow_runs(state.state_details.flow_run_id))
    [cancelled] = [r for r in runs if r.id == run_id]
    assert cancelled.state is not None and cancelled.state.is_cancelled(), cancelled.state


def _by_item(runs: list[Any], item_id: str) -> Any:
    for run in runs:
        if run.parameters.get("item_id") == item_id and run.state and run.state.is_running():
            return run
    return None
