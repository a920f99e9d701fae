"""Cancelling the agent's flow run (as the UI's Cancel button does) stops the agent cleanly."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest
from prefect import State, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Cancelling

from agent_lib.backends import SqlBackend
from agent_lib.states import AgentStatus, ItemState
from flows import launch_agent
from tests.flows.prefect_reads import subflow_runs
from tests.helpers import sh_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


async def running_agent_run(name: str, timeout: float = 30) -> UUID:
    """The id of the running `launch-agent` flow run called `name`."""
    async with get_client() as client:
        for _ in range(int(timeout / 0.2)):
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["launch-agent"])),
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[name]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
                ),
                sort=FlowRunSort.ID_DESC,
                limit=5,
                offset=0,
            )
            if runs:
                return runs[0].id
            await asyncio.sleep(0.2)
    raise AssertionError(f"no running launch-agent flow run named {name!r}")


async def claimed(backend: SqlBackend, items: list[str], count: int, timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.1)):
        infos = await asyncio.to_thread(lambda: [backend.get_item(i) for i in items])
        if sum(1 for i in infos if i is not None and i.state is ItemState.CLAIMED) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} items were never claimed")


async def cancel_while_running(
    backend: SqlBackend, params: dict[str, Any], items: list[str], queue: str
) -> State[Any]:
    """Start the agent flow, cancel its run once 2 jobs run, return its final state."""
    agent = asyncio.create_task(
        launch_agent(**params, queues=[queue], max_jobs=2, return_state=True)  # type: ignore[arg-type]
    )
    await claimed(backend, items, 2)
    run_id = await running_agent_run(f"agent on {queue}")
    async with get_client() as client:
        await client.set_flow_run_state(run_id, Cancelling(message="cancelled by a test"))
    state: State[Any] = await asyncio.wait_for(agent, 90)
    return state


def assert_stopped_cleanly(backend: SqlBackend, items: list[str]) -> None:
    (record,) = backend.list_agents()
    assert record.status == AgentStatus.KILLED
    states = [i.state for i in backend.list_items()]
    assert ItemState.LEASED not in states, states
    assert backend.get_item(items[2]).state is ItemState.PENDING  # type: ignore[union-attr]


def test_cancel_requeues_running_jobs_by_default(
    backend: SqlBackend, flow_settings: dict[str, Any]
) -> None:
    items = [backend.push_to_run_queue("qc1", sh_job("sleep 60")) for _ in range(3)]

    state = asyncio.run(cancel_while_running(backend, flow_settings, items, "qc1"))

    assert state.is_cancelled(), state
    assert "on_cancel=requeue" in (state.message or "")
    assert_stopped_cleanly(backend, items)
    running = [backend.get_item(i) for i in items[:2]]
    assert all(i is not None and i.state is ItemState.PREEMPTED for i in running), running
    assert len(backend.list_items()) == 5, "each cancelled job is back on its queue"
    subflows = asyncio.run(subflow_runs(state.state_details.flow_run_id))  # type: ignore[arg-type]
    assert len(subflows) == 2
    assert all(r.state is not None and r.state.is_cancelled() for r in subflows), subflows


def test_cancel_with_on_cancel_finish_lets_running_jobs_end(
    backend: SqlBackend, flow_settings: dict[str, Any]
) -> None:
    items = [backend.push_to_run_queue("qc2", sh_job("sleep 8")) for _ in range(3)]
    params = {**flow_settings, "on_cancel": "finish"}

    state = asyncio.run(cancel_while_running(backend, params, items, "qc2"))

    assert state.is_cancelled(), state
    assert_stopped_cleanly(backend, items)
    assert all(backend.get_item(i).state is ItemState.FINISHED for i in items[:2])  # type: ignore[union-attr]
    subflows = asyncio.run(subflow_runs(state.state_details.flow_run_id))  # type: ignore[arg-type]
    assert sorted(r.state_name or "" for r in subflows) == ["Completed", "Completed"]
