"""`task_run_job`: one Prefect subflow run per queue item, around the agent's own `Job`.

The body (agent_lib's `Job.run`: validate, ack, sweep check, build, launch, wait, settle)
is not a parameter: it cannot be serialized, so it travels in a context variable set by
the hook just before the call. The subflow's final state is the job's `Outcome`, shown,
never worked out again. Its parameters are what a person searches for: queue, item id.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from prefect import State, flow, get_client, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Completed, Failed

from agent_lib.job import Job, OutcomeKind
from agent_lib.redact import redact
from flows.artifacts import publish_job_artifact
from flows.logs import streaming_output

log = logging.getLogger(__name__)

JobBody = Callable[[], Awaitable[object]]


@dataclass
class JobCall:
    """What the hook hands the subflow, and what the subflow hands back."""

    job: Job
    body: JobBody
    started: bool = False
    finished: bool = False
    error: BaseException | None = field(default=None, repr=False)


current_job: ContextVar[JobCall] = ContextVar("launch_agent_current_job")


def final_state(job: Job) -> State[None]:
    """The job's outcome as the subflow's state; Failed carries 'phase: message'."""
    outcome = job.outcome
    if outcome is None:
        return Failed(message="the job ended without an outcome (see the agent's log)")
    if outcome.kind is OutcomeKind.FAILED:
        return Failed(message=f"failed in phase {outcome.phase}: {outcome.message}")
    if outcome.kind is OutcomeKind.FINISHED:
        return Completed(message="job finished")
    return Cancelled(message=outcome.describe())


@flow(
    name="task_run_job",
    flow_run_name="{queue}/{item_id}",
    persist_result=False,
    validate_parameters=False,
)
async def task_run_job(queue: str, item_id: str) -> State[None]:
    """Run one queue item's job: its steps are this run's task runs."""
    call = current_job.get()
    job = call.job
    logger = get_run_logger()
    call.started = True
    try:
        async with streaming_output(lambda: job.log_path, logger):
            await call.body()
    except Exception as exc:
        call.error = exc
    call.finished = True
    outcome = job.outcome
    if outcome is not None and outcome.kind is OutcomeKind.FAILED:
        logger.error("item %s failed in phase %s: %s", item_id, outcome.phase, outcome.message)
    await publish_job_artifact(job)
    return final_state(job)


def job_label(job: Job) -> str:
    """What a person calls the job: its run name, named job, or command (redacted)."""
    spec = job.spec
    if spec is None:
        return ""
    words = spec.overrides.entry_point or []
    label = spec.name or spec.job or " ".join([*words, *spec.overrides.args])
    return redact(label)[:80]


async def name_job_run(job: Job) -> None:
    """Once the spec is known, add the job's name to the subflow run's name."""
    label = job_label(job)
    context = FlowRunContext.get()
    if not label or context is None or context.flow_run is None:
        return
    name = f"{job.queue}/{job.item_id}: {label}"
    try:
        async with get_client() as client:
            await client.update_flow_run(context.flow_run.id, name=name)
    except Exception as exc:
        log.debug("could not rename the run of item %s: %s", job.item_id, exc)
