"""Where a host framework wraps the agent's units of work.

The agent calls `run_job` once per item and `run_step` for each step of it (validate, ack,
sweep check, build, launch, wait, settle or report failure). By default they just run,
with retries on transient errors; `flows/` overrides them to make each job a Prefect
subflow run and each step a task run. Same engine, decorated, never re-implemented.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.exc import OperationalError

from agent_lib.errors import TransientError

if TYPE_CHECKING:
    from agent_lib.job import Job

T = TypeVar("T")
log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    ConnectionError,
    TimeoutError,
    OperationalError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff: 0.5 s, 1 s, 2 s ... up to `cap`."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


async def retry_transient(fn: Callable[[], Awaitable[T]], retries: int, what: str) -> T:
    """Run `fn`, retrying up to `retries` times with backoff when it fails transiently."""
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            attempt += 1
            if attempt > retries or not is_transient(exc):
                raise
            delay = backoff_delay(attempt)
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, exc, attempt, retries, delay)
            await asyncio.sleep(delay)


class AgentHooks:
    """Plain hooks: a job is a coroutine, a step is an awaited call."""

    async def run_job(self, job: Job, body: Callable[[], Awaitable[object]]) -> None:
        await body()

    async def run_step(
        self,
        job: Job,
        step: str,
        fn: Callable[[], Awaitable[T]],
        retries: int = 0,
    ) -> T:
        return await retry_transient(fn, retries, f"item {job.item_id}: {step}")
