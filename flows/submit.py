"""The `submit` flow: push one job to a launch queue, from Prefect's UI (Run -> Custom run).

Its parameters are the launch spec's common fields, so the UI's Run form is a job form;
the item goes through the same checks as `launch-agent push` and is run by whichever
agent pops it. The submitting flow run's id goes in the spec, under
`_prefect.submitted_by_flow_run`, for the agent to link the job's subflow run to it.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from agent_lib import AgentConfig, open_backend
from agent_lib.config import queue_name_problem
from agent_lib.runners import available_resources
from agent_lib.spec import LOCAL_PROCESS, LaunchSpec

PREFECT_KEY = "_prefect"
# The tag of the job subflow runs of items a `submit` run pushed, with that run's id.
SUBMITTED_TAG = "submitted-by:"


def submitted_by(run_spec: dict[str, Any]) -> str | None:
    """The id of the `submit` flow run that pushed this item, if one did (and it is one)."""
    marker = run_spec.get(PREFECT_KEY)
    found = marker.get("submitted_by_flow_run") if isinstance(marker, dict) else None
    try:
        return str(UUID(str(found))) if found else None
    except ValueError:
        return None


Priority = Literal["critical", "high", "medium", "low"]
PRIORITIES: dict[str, int] = {"critical": 0, "high": 1, "medium": 2, "low": 3}


def submit_run_name() -> str:
    params = flow_run.parameters
    what = params.get("job") or " ".join(params.get("entry_point") or []) or params.get("image")
    return f"submit to {params.get('queue', 'default')}: {what or '?'}"[:200]


def build_spec(
    job: str | None,
    entry_point: list[str] | None,
    args: list[str] | None,
    run_config: dict[str, Any] | None,
    resource: str | None,
    image: str | None,
    submitted_by: str | None,
) -> dict[str, Any]:
    """The raw launch spec, checked as the agent will check it (SpecError / ValueError)."""
    if not (job or entry_point or image):
        raise ValueError("nothing to run: give a job, an entry_point or an image")
    overrides: dict[str, Any] = {"args": list(args or []), "run_config": dict(run_config or {})}
    spec: dict[str, Any] = {"overrides": overrides}
    if entry_point:
        overrides["entry_point"] = list(entry_point)
        resource = resource or LOCAL_PROCESS
    if job:
        spec["job"] = job
    if image:
        spec["docker"] = {"docker_image": image}
    if resource:
        if resource not in available_resources():
            raise ValueError(
                f"resource {resource!r} is not supported "
                f"(supported: {', '.join(available_resources())})"
            )
        spec["resource"] = resource
    if submitted_by:
        spec[PREFECT_KEY] = {"submitted_by_flow_run": submitted_by}
    LaunchSpec.parse(spec)  # refuse what the agent would refuse, before it is queued
    return spec


@flow(name="submit", flow_run_name=submit_run_name, persist_result=False)
def submit(
    queue: str = "default",
    job: str | None = None,
    entry_point: list[str] | None = None,
    args: list[str] | None = None,
    run_config: dict[str, Any] | None = None,
    resource: str | None = None,
    image: str | None = None,
    priority: Priority | None = None,
    backend_url: str | None = None,
    config_file: str | None = None,
) -> str:
    """Push one job to `queue`; returns the queue item's id.

    Give a `job` (a W&B job name), an `entry_point` (a command, run as a local process
    unless `resource` says otherwise) or an `image`; `args` and `run_config` override the
    job's. `priority`: critical, high, medium (the default) or low. The backend and
    config file are the agent's (its config file and LAUNCH_AGENT_* variables apply).
    """
    problem = queue_name_problem(queue)
    if problem:
        raise ValueError(f"queue: {problem}")
    spec = build_spec(job, entry_point, args, run_config, resource, image, flow_run.id)
    config = AgentConfig.load(config_file, backend_url=backend_url)
    api = open_backend(config.resolved_backend_url, config.lease_seconds)
    try:
        item_id = api.push_to_run_queue(
            queue,
            spec,
            PRIORITIES[priority] if priority else None,
            config.entity,
            config.project,
        )
    finally:
        api.close()
    create_markdown_artifact(
        f"Pushed item **{item_id}** to queue **{queue}**. The agent that runs it shows the "
        f"job as the subflow run `{queue}/{item_id}`, tagged `{SUBMITTED_TAG}{flow_run.id}`.",
        description=f"item {item_id} on queue {queue}",
    )
    return item_id
