"""The deployments load, with their schedules and concurrency settings, into a real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import timedelta

import pytest
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.client.schemas.responses import DeploymentResponse

from deployments.serve import build_deployments
from tests.flows.conftest import PREFECT, read_deployment
from tests.helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_deployment_left")]

DEPLOY_FILE = ["--prefect-file", "deployments/prefect.yaml"]


def assert_one_at_a_time(deployment: DeploymentResponse) -> None:
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options is not None
    assert deployment.concurrency_options.collision_strategy is ConcurrencyLimitStrategy.CANCEL_NEW


def prefect_cli(api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [PREFECT, *args],
        cwd=REPO,
        env={**os.environ, "PREFECT_API_URL": api_url, "PWD": str(REPO), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done


def test_served_deployments_have_their_schedules_and_limits(prefect_server: str) -> None:
    built = build_deployments(
        {"queues": ["gpu"], "max_jobs": 2, "stop_after_jobs": 500, "backend_url": "sqlite:///q"},
        restart_every=120,
        drain_cron="*/30 * * * *",
    )
    for deployment in built:
        deployment.apply()

    agent = asyncio.run(read_deployment("launch-agent/agent"))
    assert agent.parameters == {
        "queues": ["gpu"],
        "max_jobs": 2,
        "stop_after_jobs": 500,
        "backend_url": "sqlite:///q",
    }
    (schedule,) = agent.schedules
    assert schedule.schedule.interval == timedelta(seconds=120)  # type: ignore[union-attr]
    assert_one_at_a_time(agent)

    drainer = asyncio.run(read_deployment("drain/drain"))
    assert drainer.parameters == {"queues": ["gpu"], "max_jobs": 2, "backend_url": "sqlite:///q"}
    (schedule,) = drainer.schedules
    assert schedule.schedule.cron == "*/30 * * * *"  # type: ignore[union-attr]
    assert_one_at_a_time(drainer)

    submitter = asyncio.run(read_deployment("submit/submit"))
    assert submitter.parameters == {"backend_url": "sqlite:///q"}
    assert submitter.schedules == []
    assert submitter.global_concurrency_limit is None


def test_agent_has_no_polling_schedule_by_default(prefect_server: str) -> None:
    agent, _, _ = build_deployments({"queues": ["default"]})
    agent.apply()
    assert asyncio.run(read_deployment("launch-agent/agent")).schedules == []


def test_prefect_yaml_deploys_to_a_work_pool_with_the_real_cli(prefect_server: str) -> None:
    async def create_pool() -> None:
        async with get_client() as client:
            await client.create_work_pool(
                WorkPoolCreate(name="launch-agent", type="process"), overwrite=True
            )

    asyncio.run(create_pool())
    prefect_cli(prefect_server, "--no-prompt", "deploy", "--all", *DEPLOY_FILE)
    listed = prefect_cli(prefect_server, "deployment", "ls").stdout
    for name in ("launch-agent/agent", "drain/drain", "submit/submit"):
        assert name in listed, listed

    agent = asyncio.run(read_deployment("launch-agent/agent"))
    assert agent.work_pool_name == "launch-agent"
    assert agent.parameters["stop_after_hours"] == 24
    assert agent.schedules == []
    assert agent.job_variables == {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}
    assert_one_at_a_time(agent)
    drainer = asyncio.run(read_deployment("drain/drain"))
    (schedule,) = drainer.schedules
    assert schedule.schedule.cron == "0 * * * *"  # type: ignore[union-attr]
    assert_one_at_a_time(drainer)
    submitter = asyncio.run(read_deployment("submit/submit"))
    assert submitter.entrypoint == "flows/submit.py:submit"
    assert submitter.work_pool_name == "launch-agent"
