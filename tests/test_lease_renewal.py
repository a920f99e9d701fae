"""A job whose first steps wait on a slow host framework (a Prefect server slow to record
it) keeps its lease: the agent renews it while it lives, so no other agent takes the item."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent_lib import AgentHooks, ItemState, LaunchAgent
from agent_lib.backends import SqlBackend, open_backend
from agent_lib.job import Job
from tests.helpers import fast_config, read_records, record_job


class SlowToRecord(AgentHooks):
    """Like a Prefect server that takes seconds to create each job's subflow run."""

    async def run_job(self, job: Job, body: Callable[[], Awaitable[object]]) -> None:
        await asyncio.sleep(2.0)
        await body()


def test_a_slow_start_does_not_lose_the_lease(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    item_id = backend.push_to_run_queue("default", record_job(log))
    slow_config = fast_config(tmp_path / "slow", exit_when_idle=True, lease_seconds=0.5)
    other_backend = open_backend(db_url, lease_seconds=0.5)
    other_config = fast_config(tmp_path / "other", exit_when_idle=False, lease_seconds=0.5)

    async def scenario() -> None:
        slow = LaunchAgent(open_backend(db_url, lease_seconds=0.5), slow_config, SlowToRecord())
        slow_loop = asyncio.create_task(slow.loop())
        while backend.get_item(item_id).state is ItemState.PENDING:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
        other = LaunchAgent(other_backend, other_config)  # polls the queue all along
        other_loop = asyncio.create_task(other.loop())
        await asyncio.wait_for(slow_loop, 30)
        other.stop()
        await asyncio.wait_for(other_loop, 30)

    started = time.monotonic()
    asyncio.run(scenario())
    other_backend.close()

    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FINISHED
    assert info.attempts == 1, "never leased twice"
    assert [r[0] for r in read_records(log)] == ["start", "end"]
    assert time.monotonic() - started >= 2.0  # the slow start really outlived the lease
