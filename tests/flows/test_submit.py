"""The `submit` flow pushes a job as the UI's Run form would, and an agent runs it."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.objects import FlowRun

from agent_lib.backends import SqlBackend
from agent_lib.errors import SpecError
from agent_lib.states import ItemState
from deployments.serve import build_deployments
from flows import submit
from flows.submit import build_spec
from tests.flows.conftest import PREFECT, read_deployment
from tests.flows.prefect_reads import artifacts_of, subflow_runs
from tests.flows.test_agent_flow import run_drain, wait_for_logs
from tests.helpers import PYTHON, REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_deployment_left")]


async def create_submit_run(parameters: dict[str, Any]) -> FlowRun:
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("submit/submit")
        return await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)


async def read_run(run_id: UUID) -> FlowRun:
    async with get_client() as client:
        return await client.read_flow_run(run_id)


def test_the_run_form_has_the_spec_fields(prefect_server: str) -> None:
    for deployment in build_deployments({"backend_url": "sqlite:///x.db"}):
        deployment.apply()
    submitter = asyncio.run(read_deployment("submit/submit"))
    assert submitter.parameter_openapi_schema is not None
    fields = submitter.parameter_openapi_schema["properties"]
    for name in ("queue", "job", "entry_point", "args", "run_config", "resource", "image"):
        assert name in fields
    assert {"type": "array", "items": {"type": "string"}} in fields["entry_point"]["anyOf"]
    assert fields["priority"]["anyOf"][0]["enum"] == ["critical", "high", "medium", "low"]
    assert submitter.parameters == {"backend_url": "sqlite:///x.db"}


def test_a_submit_run_of_the_deployment_pushes_a_job_an_agent_finishes(
    prefect_server: str, db_url: str, backend: SqlBackend, flow_settings: dict[str, Any]
) -> None:
    for deployment in build_deployments({"backend_url": db_url}):
        deployment.apply()
    parameters = {
        "queue": "from-ui",
        "entry_point": [PYTHON, "-c", "import sys; print('hi', sys.argv[1:])"],
        "args": ["--lr", "0.1"],
        "run_config": {"epochs": 2},
        "priority": "high",
    }
    run = asyncio.run(create_submit_run(parameters))
    # Execute the deployment's run as a worker or `serve` would: from its entrypoint.
    done = subprocess.run(
        [PREFECT, "flow-run", "execute", str(run.id)],
        cwd=REPO,
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    finished = asyncio.run(read_run(run.id))
    assert finished.state is not None and finished.state.is_completed(), (
        finished.state,
        done.stdout[-4000:],
        done.stderr[-4000:],
    )

    (item,) = backend.list_items("from-ui", None, 10)
    assert item.priority == 1
    spec = item.run_spec
    assert spec["resource"] == "local-process"
    assert spec["overrides"]["entry_point"] == parameters["entry_point"]
    assert spec["overrides"]["args"] == ["--lr", "0.1"]
    assert spec["overrides"]["run_config"] == {"epochs": 2}
    assert spec["_prefect"] == {"submitted_by_flow_run": str(run.id)}

    state = run_drain(flow_settings, queues=["from-ui"])
    assert state.is_completed(), state
    info = backend.get_item(item.id)
    assert info is not None and info.state is ItemState.FINISHED, info
    # The job's subflow run links back to the submit run: by tag, log line and artifact.
    assert state.state_details.flow_run_id is not None
    (job_run,) = asyncio.run(subflow_runs(state.state_details.flow_run_id))
    assert f"submitted-by:{run.id}" in job_run.tags
    messages = asyncio.run(wait_for_logs(job_run.id, "submitted from Prefect"))
    assert any(str(run.id) in m for m in messages if "submitted from Prefect" in m), messages
    (job_artifact,) = asyncio.run(artifacts_of(job_run.id))
    assert f"/runs/flow-run/{run.id})" in str(job_artifact.data)
    (pushed,) = asyncio.run(artifacts_of(run.id))
    assert f"`from-ui/{item.id}`" in str(pushed.data)


def test_submit_called_as_a_flow_returns_the_item_id(
    prefect_server: str, db_url: str, backend: SqlBackend
) -> None:
    item_id = submit(queue="q", job="my-job:v1", image="python:3.11", backend_url=db_url)
    info = backend.get_item(item_id)
    assert info is not None and info.queue == "q" and info.state is ItemState.PENDING
    assert info.run_spec["job"] == "my-job:v1"
    assert info.run_spec["docker"] == {"docker_image": "python:3.11"}
    assert "submitted_by_flow_run" in info.run_spec["_prefect"]


def test_a_bad_spec_is_refused_before_it_is_queued() -> None:
    with pytest.raises(ValueError, match="nothing to run"):
        build_spec(None, None, ["--x"], None, None, None, None)
    with pytest.raises(ValueError, match="not supported"):
        build_spec(None, ["true"], None, None, "moon", None, None)
    with pytest.raises(SpecError, match="NUL"):
        build_spec(None, ["true"], ["a\x00b"], None, None, None, None)
