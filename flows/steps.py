"""Each step of a job (ack, build, launch, wait...) as a Prefect task run.

Retries come from Prefect, but only when the step's error is transient (a backend or
engine hiccup): a user's job that fails is never run twice. Results are not persisted:
they are small, in-memory values the next step needs, nothing worth storing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

from prefect import State, Task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun

from agent_lib.hooks import backoff_delay, is_transient

StepFn = Callable[[], Awaitable[Any]]


def only_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry condition: retry a step only if it failed transiently."""
    exc = state.data
    return isinstance(exc, BaseException) and is_transient(exc)


async def _call(step: str, fn: StepFn) -> Any:
    """The task body: the agent's own step, unchanged (`step` names the run in the UI)."""
    return await fn()


@cache
def step_task(step: str, retries: int) -> Task[..., Any]:
    """One task object per (step, retries), built once and reused for every job."""
    delays: list[float] = [backoff_delay(n) for n in range(1, retries + 1)]
    return Task(
        _call,
        name=step,
        task_run_name=step,
        retries=retries,
        retry_delay_seconds=delays or 0,
        retry_condition_fn=only_transient,
        persist_result=False,
        cache_policy=NO_CACHE,
    )
