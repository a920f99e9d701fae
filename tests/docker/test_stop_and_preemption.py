"""Containers: a stop request ends the container at once; `docker stop` by someone else is a
preemption, and the job resumes as the same run; an OOM kill stays a failure."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent_lib import LaunchAgent
from agent_lib.states import ItemState
from tests.docker.conftest import Harness, sh

pytestmark = pytest.mark.timeout(150)

# The first run waits to be stopped; its resume (WANDB_RESUME=allow) ends at once.
RESUMABLE = (
    'if [ "$WANDB_RESUME" = allow ]; then echo resumed; exit 0; fi; '
    'trap "exit 143" TERM; sleep 600 & wait'
)


async def until(predicate: Any, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def running(harness: Harness, item_id: str) -> list[Any]:
    return [c for c in harness.containers(item=item_id) if c.status == "running"]


def test_a_stop_request_stops_the_container_and_removes_it(harness: Harness, busybox: str) -> None:
    item_id = harness.push(sh(busybox, 'trap "exit 143" TERM; sleep 600 & wait'))

    async def scenario() -> None:
        agent = LaunchAgent(harness.db, harness.agent_config(exit_when_idle=False))
        loop_task = asyncio.create_task(agent.loop())
        try:
            await until(lambda: running(harness, item_id))
            harness.db.cancel_run_queue_item(item_id, "tester@host")
            await until(lambda: harness.item(item_id).state.is_terminal)
        finally:
            agent.stop()
            await asyncio.wait_for(loop_task, 60)

    asyncio.run(scenario())
    info = harness.item(item_id)
    assert info.state is ItemState.STOPPED
    assert info.stop_requested_by == "tester@host"
    assert harness.containers() == []


def test_docker_stop_by_someone_else_preempts_and_the_job_resumes(
    harness: Harness, busybox: str
) -> None:
    item_id = harness.push(sh(busybox, RESUMABLE))

    async def scenario() -> None:
        agent = LaunchAgent(harness.db, harness.agent_config(exit_when_idle=False))
        loop_task = asyncio.create_task(agent.loop())
        try:
            await until(lambda: running(harness, item_id))
            [container] = running(harness, item_id)
            await asyncio.to_thread(container.stop, timeout=5)  # a node drain, a spot reclaim
            await until(lambda: len(harness.db.list_items()) == 2)
            await until(lambda: all(i.state.is_terminal for i in harness.db.list_items()))
        finally:
            agent.stop()
            await asyncio.wait_for(loop_task, 60)

    asyncio.run(scenario())
    first = harness.item(item_id)
    assert first.state is ItemState.PREEMPTED
    [resumed] = [i for i in harness.db.list_items() if i.id != item_id]
    assert resumed.state is ItemState.FINISHED
    assert resumed.run_spec["run_id"] == first.run_id
    assert resumed.run_spec["_resume_count"] == 1
    assert "resumed" in harness.output(resumed.id)
    assert harness.containers() == []
