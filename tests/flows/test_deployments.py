"""The deployments load, with their schedules and concurrency settings, into a real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.client.schemas.responses import DeploymentResponse

from deployments.serve import build_deployments
from tests.helpers import REPO

pytestmark = [pytest.mark.slow]

# `prefect deploy`, with one work-around: on this machine (Prefect 3.8.8, FastAPI 0.154) the
# server rejects the explicit `"limit": null` that the CLI's worker lookup sends (422), after
# the first deployment is created. Sending numbers instead changes nothing else.
DEPLOY_FILE = ["--prefect-file", "deployments/prefect.yaml"]
PREFECT_CLI = """
import sys
from prefect.client.orchestration import PrefectClient
real = PrefectClient.read_workers_for_work_pool
async def read_workers(self, name, worker_filter=None, offset=None, limit=None):
    return await real(self, name, worker_filter, offset or 0, limit or 200)
PrefectClient.read_workers_for_work_pool = read_workers
from prefect.cli import app
sys.argv[0] = "prefect"
sys.exit(app())
"""


async def read_deployment(name: str) -> DeploymentResponse:
    async with get_client() as client:
        return await client.read_deployment_by_name(name)


def assert_one_at_a_time(deployment: DeploymentResponse) -> None:
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options is not None
    assert deployment.concurrency_options.collision_strategy is ConcurrencyLimitStrategy.CANCEL_NEW


def test_served_deployments_have_their_schedules_and_limits(prefect_server: str) -> None:
    built = build_deployments(
        {"queues": ["gpu"], "max_jobs": 2, "stop_after_jobs": 500},
        restart_every=120,
        drain_cron="*/30 * * * *",
    )
    for deployment in built:
        deployment.apply()

    agent = asyncio.run(read_deployment("launch-agent/agent"))
    assert agent.parameters == {"queues": ["gpu"], "max_jobs": 2, "stop_after_jobs": 500}
    (schedule,) = agent.schedules
    assert schedule.schedule.interval == timedelta(seconds=120)  # type: ignore[union-attr]
    assert_one_at_a_time(agent)

    drainer = asyncio.run(read_deployment("drain/drain"))
    assert drainer.parameters == {"queues": ["gpu"], "max_jobs": 2}
    (schedule,) = drainer.schedules
    assert schedule.schedule.cron == "*/30 * * * *"  # type: ignore[union-attr]
    assert_one_at_a_time(drainer)


def test_prefect_yaml_deploys_to_a_work_pool(prefect_server: str) -> None:
    async def create_pool() -> None:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="launch-agent", type="process"))

    asyncio.run(create_pool())
    done = subprocess.run(
        [sys.executable, "-c", PREFECT_CLI, "--no-prompt", "deploy", "--all", *DEPLOY_FILE],
        cwd=REPO,
        env={**os.environ, "PREFECT_API_URL": prefect_server, "PWD": str(REPO)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    agent = asyncio.run(read_deployment("launch-agent/agent"))
    assert agent.work_pool_name == "launch-agent"
    assert agent.parameters["stop_after_hours"] == 24
    (schedule,) = agent.schedules
    assert schedule.schedule.interval == timedelta(seconds=300)  # type: ignore[union-attr]
    assert_one_at_a_time(agent)
    drainer = asyncio.run(read_deployment("drain/drain"))
    (schedule,) = drainer.schedules
    assert schedule.schedule.cron == "0 * * * *"  # type: ignore[union-attr]
    assert_one_at_a_time(drainer)
