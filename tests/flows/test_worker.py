"""The agent under a real Prefect process worker, as `python -m deployments.deploy` sets it
up: cancelling its run (busy or idle) stops it cleanly, and a deployment whose code comes
from git runs on a worker that has no checkout of the project."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import State
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling

from agent_lib.backends import SqlBackend
from agent_lib.states import AgentStatus, ItemState
from deployments import deploy
from deployments.serve import build_deployments
from tests.flows.conftest import PREFECT, delete_deployments
from tests.helpers import REPO, alive, sh_job, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# What a process worker logs when a flow run's process exits with a non-zero code.
BAD_EXIT = "Process exited with status code"


async def create_pool(name: str) -> None:
    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=name, type="process"), overwrite=True)


async def delete_pool_and_deployments(name: str) -> None:
    await delete_deployments()
    async with get_client() as client:
        with contextlib.suppress(ObjectNotFound):
            await client.delete_work_pool(name)


@contextlib.contextmanager
def process_worker(api_url: str, pool: str, cwd: Path, log: Path) -> Iterator[None]:
    """`prefect worker start --pool POOL` in `cwd`, polling every second."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        yield
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.fixture
def pool(prefect_server: str) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_pool(name))
    yield name
    asyncio.run(delete_pool_and_deployments(name))


async def start_run(deployment_name: str, parameters: dict[str, Any]) -> UUID:
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(deployment_name)
        run = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        return run.id


async def cancel(run_id: UUID) -> None:
    async with get_client() as client:
        await client.set_flow_run_state(run_id, Cancelling(message="cancelled by a test"))


def final_state(run_id: UUID, timeout: float) -> State[Any]:
    async def read() -> State[Any] | None:
        async with get_client() as client:
            return (await client.read_flow_run(run_id)).state

    def ended() -> State[Any] | None:
        state = asyncio.run(read())
        return state if state is not None and state.is_final() else None

    found: State[Any] = wait_for(ended, timeout, what="the flow run to end")
    return found


def agent_parameters(db_url: str, data_dir: Path) -> dict[str, Any]:
    return {
        "backend_url": db_url,
        "queues": ["worker"],
        "settings": {"data_dir": str(data_dir), "poll_interval": 0.05, "cancel_grace": 2.0},
    }


def project_repository(path: Path) -> Path:
    """A git repository holding the project's files as they are now (committed or not)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        if (REPO / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, path / name)
    git = ["git", "-C", str(path), "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the project"], check=True)
    return path


def deploy_from_this_checkout(pool: str) -> None:
    for deployment in build_deployments(source=str(REPO)):
        deployment.apply(work_pool_name=pool)


@pytest.mark.parametrize("busy", [True, False], ids=["busy", "idle"])
def test_cancelling_the_agent_under_a_worker_stops_it_cleanly(
    prefect_server: str, pool: str, backend: SqlBackend, db_url: str, tmp_path: Path, busy: bool
) -> None:
    deploy_from_this_checkout(pool)
    pids = tmp_path / "pids"
    job = sh_job(f"echo $$ >> {pids}; sleep 120")
    item_id = backend.push_to_run_queue("worker", job) if busy else None
    log = tmp_path / "worker.log"
    with process_worker(prefect_server, pool, tmp_path, log):
        run_id = asyncio.run(
            start_run("launch-agent/agent", agent_parameters(db_url, tmp_path / "data"))
        )
        if busy:
            wait_for(lambda: pids.exists() and pids.read_text().strip(), 120, what="the job")
        else:
            wait_for(lambda: backend.list_agents(), 120, what="the agent to start")
        asyncio.run(cancel(run_id))
        state = final_state(run_id, 120)

    assert state.is_cancelled(), state
    assert BAD_EXIT not in log.read_text(), log.read_text()[-3000:]  # its process exited 0
    [agent] = backend.list_agents()
    assert agent.status == AgentStatus.KILLED
    if busy:
        pid = int(pids.read_text().split()[0])
        wait_for(lambda: not alive(pid), 30, what="the job's process to end")
        first = backend.get_item(item_id)
        assert first is not None and first.state is ItemState.PREEMPTED, first
        [resumed] = [i for i in backend.list_items() if i.id != item_id]
        assert resumed.state is ItemState.PENDING and resumed.run_spec["_resume_count"] == 1
        assert "requeued" in (state.message or ""), state.message


def test_a_deployment_from_git_runs_on_a_worker_without_the_checkout(
    prefect_server: str, pool: str, backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    repository = project_repository(tmp_path / "project")
    deploy.main(
        [
            "--pool",
            pool,
            "--from-git",
            f"file://{repository}",
            "--backend-url",
            db_url,
            "--no-automations",
        ]
    )
    elsewhere = tmp_path / "worker-home"
    elsewhere.mkdir()
    log = tmp_path / "worker.log"
    with process_worker(prefect_server, pool, elsewhere, log):
        run_id = asyncio.run(start_run("submit/submit", {"queue": "from-git", "job": "train"}))
        state = final_state(run_id, 120)

    assert state.is_completed(), (state, log.read_text()[-3000:])
    assert "git_clone" in log.read_text()
    (item,) = backend.list_items("from-git", None, 10)
    assert item.run_spec["job"] == "train"
