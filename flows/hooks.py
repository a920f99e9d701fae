"""`PrefectHooks`: agent_lib's hook points mapped onto Prefect.

- `run_job` -> a `task_run_job` subflow run (a child of the agent's flow run, because
  the job's asyncio task copies the flow's context when the agent starts it);
- `run_step` -> a task run named after the step, retried only on transient errors.

Prefect is bookkeeping here, never a reason to lose a job: if Prefect fails before a job
or a step started (say the server answers 503 when asked to create the run), the same
body runs without Prefect and the error is logged; if it fails after, the body's own
outcome stands. Only the agent's own exceptions (and cancellation) reach the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from prefect import tags

from agent_lib.hooks import AgentHooks
from agent_lib.job import Job
from flows.job_flow import (
    JobBody,
    JobCall,
    current_job,
    job_tags,
    name_job_run,
    spec_parameter,
    task_run_job,
)
from flows.steps import step_task

T = TypeVar("T")
log = logging.getLogger("agent_lib.flows")

# Set while a job runs without Prefect (its subflow could not be created).
_plain: ContextVar[bool] = ContextVar("launch_agent_plain_job", default=False)


@dataclass
class _Attempt:
    """Whether the wrapped function ran, and how it ended (to tell its errors from Prefect's)."""

    started: bool = False
    finished: bool = False
    result: Any = None
    error: BaseException | None = field(default=None, repr=False)


class PrefectHooks(AgentHooks):
    """Jobs as subflow runs, steps as task runs; remembers running jobs for the status."""

    def __init__(self) -> None:
        self.running: dict[str, Job] = {}
        self.prefect_errors = 0

    async def run_job(self, job: Job, body: JobBody) -> None:
        self.running[job.item_id] = job
        try:
            await self._run_job(job, body)
        finally:
            self.running.pop(job.item_id, None)

    async def _run_job(self, job: Job, body: JobBody) -> None:
        call = JobCall(job, body)
        token = current_job.set(call)
        try:
            with tags(*job_tags(job)):  # queue and agent now; resource, project once validated
                await task_run_job(job.queue, job.item_id, spec_parameter(job), return_state=True)
        except Exception as exc:
            if call.started:
                self._prefect_failed(job, "after the job started", exc)
            else:
                self._prefect_failed(job, "creating its subflow run", exc)
                _plain.set(True)
                await body()  # runs (and raises) exactly as without Prefect
                return
        finally:
            current_job.reset(token)
        if call.error is not None:
            raise call.error
        if not call.finished:
            raise RuntimeError(f"item {job.item_id}: the job's subflow ended early")

    async def run_step(
        self,
        job: Job,
        step: str,
        fn: Callable[[], Awaitable[T]],
        retries: int = 0,
    ) -> T:
        if _plain.get():
            return await super().run_step(job, step, fn, retries)
        attempt = _Attempt()

        async def tracked() -> T:
            attempt.started, attempt.error = True, None
            try:
                attempt.result = await fn()
            except BaseException as exc:
                attempt.error = exc
                raise
            attempt.finished = True
            return cast(T, attempt.result)

        try:
            result = cast(T, await step_task(step, retries)(step, tracked))
        except Exception as exc:
            prefect_error: Exception = exc
        else:
            if step == "validate":
                await name_job_run(job)
            return result
        if attempt.error is not None:
            raise attempt.error  # the step's own failure, as agent_lib raised it
        if attempt.finished:
            self._prefect_failed(job, f"recording step {step!r}", prefect_error)
            return cast(T, attempt.result)
        self._prefect_failed(job, f"starting step {step!r}", prefect_error)
        return await super().run_step(job, step, fn, retries)

    def _prefect_failed(self, job: Job, doing: str, exc: BaseException) -> None:
        self.prefect_errors += 1
        log.warning(
            "item %s: Prefect failed %s (%s: %s); the job goes on without it",
            job.item_id,
            doing,
            type(exc).__name__,
            exc,
        )
