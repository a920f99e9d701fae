"""`task_run_job`: one Prefect subflow run per queue item, around the agent's own job body.

The body (agent_lib's whole lifecycle: validate, ack, sweep check, build, launch, wait,
finish or report failure) is not a parameter: it cannot be serialized, so it travels in a
context variable set by the hook just before the call. The subflow's parameters are what
a person searches for: queue, item id, and (after validation) the job's name.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from prefect import State, flow, get_client, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Completed, Failed

from agent_lib.errors import LaunchError, LeaseLostError
from agent_lib.redact import redact
from agent_lib.states import RunState
from agent_lib.tracker import JobTracker
from flows.artifacts import JobOutcome, publish_job_artifact
from flows.logs import streaming_output

log = logging.getLogger(__name__)

JobBody = Callable[[], Awaitable[None]]
ENDED_WITHOUT_FAILURE = (RunState.STOPPED, RunState.PREEMPTED)


@dataclass
class JobCall:
    """What the hook hands the subflow, and what the subflow hands back."""

    tracker: JobTracker
    body: JobBody
    started: bool = False
    finished: bool = False
    error: BaseException | None = field(default=None, repr=False)


current_job: ContextVar[JobCall] = ContextVar("launch_agent_current_job")


def failure_outcome(tracker: JobTracker, exc: BaseException) -> JobOutcome:
    """The phase and message the agent reported for this failure (same rule as agent_lib)."""
    phase = exc.phase if isinstance(exc, LaunchError) else tracker.err_stage
    return JobOutcome("Failed", redact(str(exc) or type(exc).__name__), str(phase))


def outcome_of(call: JobCall) -> JobOutcome:
    """How the job ended, from the body's exception (if any) and the run's status."""
    exc, tracker = call.error, call.tracker
    if isinstance(exc, LeaseLostError):
        return JobOutcome("Cancelled", f"not launched: {exc}")
    if exc is not None:
        return failure_outcome(tracker, exc)
    status = tracker.completed_status
    if status is not None and status.state in ENDED_WITHOUT_FAILURE:
        return JobOutcome("Cancelled", f"run {status.state.value} (exit code {status.exit_code})")
    return JobOutcome("Completed")


def final_state(outcome: JobOutcome) -> State[None]:
    """Failed carries 'phase: message', so the run list says where and why."""
    if outcome.state == "Failed":
        return Failed(message=f"failed in phase {outcome.phase}: {outcome.message}")
    if outcome.state == "Cancelled":
        return Cancelled(message=outcome.message)
    return Completed(message="job finished")


@flow(
    name="task_run_job",
    flow_run_name="{queue}/{item_id}",
    persist_result=False,
    validate_parameters=False,
)
async def task_run_job(queue: str, item_id: str) -> State[None]:
    """Run one queue item's job: its steps are this run's task runs."""
    call = current_job.get()
    tracker = call.tracker
    logger = get_run_logger()
    call.started = True
    try:
        async with streaming_output(lambda: tracker.log_path, logger):
            await call.body()
    except Exception as exc:
        call.error = exc
    call.finished = True
    outcome = outcome_of(call)
    if outcome.state == "Failed":
        logger.error("item %s failed in phase %s: %s", item_id, outcome.phase, outcome.message)
    await publish_job_artifact(tracker, outcome)
    return final_state(outcome)


def job_label(tracker: JobTracker) -> str:
    """What a person calls the job: its run name, named job, or command (redacted)."""
    spec = tracker.spec
    if spec is None:
        return ""
    words = spec.overrides.entry_point or []
    label = spec.name or spec.job or " ".join([*words, *spec.overrides.args])
    return redact(label)[:80]


async def name_job_run(tracker: JobTracker) -> None:
    """Once the spec is known, add the job's name to the subflow run's name."""
    label = job_label(tracker)
    context = FlowRunContext.get()
    if not label or context is None or context.flow_run is None:
        return
    name = f"{tracker.queue}/{tracker.run_queue_item_id}: {label}"
    try:
        async with get_client() as client:
            await client.update_flow_run(context.flow_run.id, name=name)
    except Exception as exc:
        log.debug("could not rename the run of item %s: %s", tracker.run_queue_item_id, exc)
