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
from uuid import UUID

from prefect import get_client

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


@contextlib.contextmanager
def sigterm_stops(on_sigterm: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGTERM calls `on_sigterm` (on the loop) instead of killing the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(on_sigterm)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
