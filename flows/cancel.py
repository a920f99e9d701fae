"""Cancelling the agent's flow run stops the agent cleanly, however the run was started.

Prefect marks a cancelled run CANCELLING; a runner or worker that started it then sends
SIGTERM (and SIGKILL 30 s later). A run started in-process (`python -m flows`, tests) has
nobody to do that. So the agent flow does both itself: it watches its own run's state,
and turns SIGTERM into a clean stop rather than Prefect's default crash-out. Either way
the agent stops popping, settles its running jobs (`on_cancel`), reports KILLED and
returns, leaving no item LEASED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

log = logging.getLogger("agent_lib.flows")


async def run_is_cancelling(flow_run_id: UUID) -> bool:
    """Whether someone asked Prefect to cancel this flow run."""
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
    state = run.state
    return state is not None and (state.is_cancelling() or state.is_cancelled())


@contextlib.asynccontextmanager
async def watching_for_cancel(
    flow_run_id: UUID | None, on_cancel: Callable[[], None], every: float
) -> AsyncIterator[None]:
    """Call `on_cancel` once when the flow run turns CANCELLING (checked every `every` s)."""

    async def watch() -> None:
        assert flow_run_id is not None
        while True:
            await asyncio.sleep(every)
            try:
                if await run_is_cancelling(flow_run_id):
                    on_cancel()
                    return
            except Exception as exc:
                log.debug("could not read the agent's flow run state: %s", exc)

    watcher = asyncio.create_task(watch()) if flow_run_id is not None else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def cancelling_job_items(agent_run_id: UUID) -> list[tuple[str, str]]:
    """(item id, run name) of the agent's job subflow runs someone asked to cancel."""
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[agent_run_id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING])),
            ),
            limit=200,
        )
    return [(str(r.parameters.get("item_id")), r.name) for r in runs]


@contextlib.asynccontextmanager
async def watching_job_cancels(
    agent_run_id: UUID | None,
    jobs_running: Callable[[], bool],
    on_cancel: Callable[[str, str], None],
    every: float,
) -> AsyncIterator[None]:
    """Call `on_cancel(item_id, run_name)` for each job subflow run turned CANCELLING (the
    UI's Cancel button on one job), checked every `every` s while jobs run."""

    async def watch() -> None:
        assert agent_run_id is not None
        while True:
            await asyncio.sleep(every)
            if not jobs_running():
                continue
            try:
                for item_id, name in await cancelling_job_items(agent_run_id):
                    on_cancel(item_id, name)
            except Exception as exc:
                log.debug("could not read the job runs' states: %s", exc)

    watcher = asyncio.create_task(watch()) if agent_run_id is not None else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


_sigterm_receivers: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []


_sigterm_pending = threading.Event()


def deliver_sigterm() -> None:
    """Hand a SIGTERM to every agent running in this process, on its own loop (safe
    from a signal handler and from any thread). One that arrives before the agent is up
    is kept, and stops it as soon as it starts."""
    _sigterm_pending.set()
    for loop, receiver in list(_sigterm_receivers):
        with contextlib.suppress(RuntimeError):  # that loop has closed meanwhile
            loop.call_soon_threadsafe(receiver)


@contextlib.contextmanager
def sigterm_stops(on_sigterm: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGTERM calls `on_sigterm` (on the loop) instead of killing the run.

    Prefect's engine arms its own SIGTERM handler in the main thread for every flow and
    subflow run, which would override this one while any job runs. So `launch-agent-flow`
    runs the flow in a worker thread (where Prefect arms nothing) and keeps the main
    thread's handler, which reaches the agent through `deliver_sigterm`."""
    entry = (asyncio.get_running_loop(), on_sigterm)
    _sigterm_receivers.append(entry)
    if _sigterm_pending.is_set():
        entry[0].call_soon(on_sigterm)
    previous: Any = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        _sigterm_receivers.remove(entry)
        if in_main:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def sigterm_delivered() -> Iterator[None]:
    """While inside, SIGTERM (and Ctrl-C) on the main thread reach the agents of this
    process through `deliver_sigterm`, whichever thread they run on."""
    previous = {
        signum: signal.signal(signum, _on_sigterm) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    deliver_sigterm()
