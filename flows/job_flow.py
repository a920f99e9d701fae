"""`task_run_job`: one Prefect subflow run per queue item, around the agent's own `Job`.

The body (agent_lib's `Job.run`: validate, ack, sweep check, build, launch, wait, settle)
is not a parameter: it cannot be serialized, so it travels in a context variable set by
the hook just before the call. The subflow's final state is the job's `Outcome`, shown,
never worked out again. Its parameters are what a person searches for: queue, item id, and
the item's spec (redacted); its tags are `launch-agent`, `queue:<q>`, then, once the spec
is validated, `resource:<r>` and `project:<entity>/<project>`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from prefect import State, flow, get_client, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Completed, Failed

from agent_lib.job import Job, OutcomeKind
from agent_lib.redact import redact, redact_mapping
from flows.artifacts import flow_run_url, output_tail, publish_job_artifact
from flows.logs import OUTPUT_NOTE, quiet_job_failures, streaming_output
from flows.submit import SUBMITTED_TAG, submitted_by

log = logging.getLogger(__name__)

AGENT_TAG = "launch-agent"
MAX_SPEC_PARAMETER_CHARS = 16_000

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


def failure_text(job: Job) -> str:
    """'failed in phase run: the job exited with code 3', with the exit code when known."""
    outcome = job.outcome
    if outcome is None:
        return "the job ended without an outcome (see the agent's log)"
    text = f"failed in phase {outcome.phase}: {outcome.message}"
    code = outcome.exit_code
    if code is not None and f"code {code}" not in outcome.message:
        text += f" (exit code {code})"
    return text


def final_state(job: Job) -> State[None]:
    """The job's outcome as the subflow's state; Failed carries phase, message, exit code."""
    outcome = job.outcome
    if outcome is None or outcome.kind is OutcomeKind.FAILED:
        return Failed(message=failure_text(job))
    if outcome.kind is OutcomeKind.FINISHED:
        return Completed(message="job finished")
    return Cancelled(message=outcome.describe())


@flow(
    name="task_run_job",
    flow_run_name="{queue}/{item_id}",
    persist_result=False,
    validate_parameters=False,
)
async def task_run_job(queue: str, item_id: str, spec: Any = None) -> State[None]:
    """Run one queue item's job: its steps are this run's task runs (`spec`: shown only)."""
    call = current_job.get()
    job = call.job
    logger = get_run_logger()
    quiet_job_failures()
    call.started = True
    submitter = submitted_by(job.lease.item.run_spec)
    if submitter:
        logger.info("submitted from Prefect by the flow run %s", flow_run_url(submitter))
    try:
        async with streaming_output(lambda: job.log_path, logger):
            await call.body()
    except Exception as exc:
        call.error = exc
    call.finished = True
    outcome = job.outcome
    if outcome is not None and outcome.kind is OutcomeKind.FAILED:
        logger.error("%s", failure_report(job))
    await publish_job_artifact(job)
    return final_state(job)


def failure_report(job: Job) -> str:
    """The failure's one line, then the end of the job's output (if it ran), labelled."""
    text = failure_text(job)
    tail = output_tail(job)
    if not tail:
        return text
    lines = tail.splitlines()
    block = "\n".join(f"| {line}" for line in lines)
    return f"{text}\nlast {len(lines)} lines of the job's output ({OUTPUT_NOTE}):\n{block}"


def job_tags(job: Job) -> list[str]:
    """The run's tags: what is known of the job so far (more after its spec is validated)."""
    found = [AGENT_TAG, f"queue:{job.queue}"]
    if job.resource:
        found.append(f"resource:{job.resource}")
    if job.project:
        project = f"{job.entity}/{job.project}" if job.entity else job.project
        found.append(f"project:{project}")
    if job.spec is not None and job.spec.sweep_id:  # a sweep's scheduler and its runs
        found.append(f"sweep:{job.spec.sweep_id}")
    submitter = submitted_by(job.lease.item.run_spec)
    if submitter:
        found.append(f"{SUBMITTED_TAG}{submitter}")
    return [redact(tag)[:100] for tag in found]


def spec_parameter(job: Job) -> Any:
    """The item's spec as submitted, redacted, for the run's parameters (capped in size)."""
    try:
        shown = redact_mapping(job.lease.item.run_spec)
        size = len(json.dumps(shown, default=str))
    except Exception as exc:  # a spec that cannot be shown never stops the job
        return {"note": f"the spec cannot be shown: {type(exc).__name__}"}
    if size > MAX_SPEC_PARAMETER_CHARS:
        return {"note": f"the spec is too large to show here ({size} characters)"}
    return shown


def job_label(job: Job) -> str:
    """What a person calls the job: its run name, named job, or command (redacted)."""
    spec = job.spec
    if spec is None:
        return ""
    words = spec.overrides.entry_point or []
    label = spec.name or spec.job or " ".join([*words, *spec.overrides.args])
    return redact(label)[:80]


async def name_job_run(job: Job) -> None:
    """Once the spec is known, add the job's name to the subflow run's name, and its
    resource and project to the run's tags (one update)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run = context.flow_run
    label = job_label(job)
    name = f"{job.queue}/{job.item_id}: {label}" if label else None
    new_tags = list(dict.fromkeys([*run.tags, *job_tags(job)]))
    if name is None and new_tags == list(run.tags):
        return
    try:
        async with get_client() as client:
            await client.update_flow_run(run.id, name=name, tags=new_tags)
    except Exception as exc:
        log.debug("could not name or tag the run of item %s: %s", job.item_id, exc)
