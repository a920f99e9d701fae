"""W&B job artifacts on `local-container`: an image job runs its image; a repo job is built
by the docker builder from its commit. A real Docker engine (skipped without one)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_lib.backends.wandb import WandbBackend
from tests.wandb.conftest import CLIENT_OPTIONS, ENTITY, FAST_BACKEND, agent_config, run_agent
from tests.wandb.job_artifacts import PROJECT, add_job
from tests.wandb.server import FakeWandb


@pytest.fixture
def container_backend(server: FakeWandb) -> Iterator[WandbBackend]:
    """Containers cannot reach the test server on the host's loopback, so their runs never
    appear in it: the run-start check is off here (tests/wandb/test_run_start.py has it)."""
    wb = WandbBackend(server.base_url, check_runs=False, **FAST_BACKEND, **CLIENT_OPTIONS)
    yield wb
    wb.close()


def container_item(job: str) -> dict[str, Any]:
    return {"job": job, "resource": "local-container", "entity": ENTITY, "project": PROJECT}


def output_of(data_dir: Path) -> str:
    (log,) = (data_dir / "jobs").glob("*/output.log")  # the only job
    return log.read_text()


def test_an_image_job_runs_its_image(
    server: FakeWandb,
    container_backend: WandbBackend,
    tmp_path: Path,
    busybox: str,
) -> None:
    job = add_job(
        server,
        "job-image",
        "image",
        {"image": busybox, "entrypoint": ["/bin/sh", "-c", 'echo "ran in $WANDB_DOCKER"']},
    )
    item_id = server.push("default", container_item(job))

    agent = run_agent(container_backend, agent_config(tmp_path, exit_when_idle=True), 120)

    assert agent.outcomes == {"finished": 1}, server.item(item_id)["failure"]
    assert f"ran in {busybox}" in output_of(tmp_path)


def test_a_repo_job_is_built_from_its_commit(
    server: FakeWandb,
    container_backend: WandbBackend,
    tmp_path: Path,
    python_base: str,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo)]
    subprocess.run(["git", "init", "--quiet", str(repo)], check=True)
    commits = []
    for version in ("built-v1", "built-v2"):
        (repo / "main.py").write_text(f"import os\nprint({version!r}, os.getcwd())\n")
        subprocess.run([*git, "add", "main.py"], check=True)
        subprocess.run([*git, "commit", "--quiet", "-m", version], check=True)
        head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True)
        commits.append(head.stdout.decode().strip())
    job = add_job(
        server,
        "job-built",
        "repo",
        {
            "git": {"remote": f"file://{repo}", "commit": commits[0]},
            "entrypoint": ["python3", "main.py"],
        },
    )
    item_id = server.push("default", container_item(job))
    builder = {
        "type": "docker",
        "base_image": python_base,
        "repository": "launch-agent-test/wandb-job",
        "pip_args": ["--no-index", "--no-build-isolation"],
    }

    agent = run_agent(
        container_backend, agent_config(tmp_path, exit_when_idle=True, builder=builder), 180
    )

    assert agent.outcomes == {"finished": 1}, server.item(item_id)["failure"]
    assert "built-v1 /app" in output_of(tmp_path)


def test_a_code_job_on_a_container_needs_a_builder(
    server: FakeWandb, container_backend: WandbBackend, tmp_path: Path
) -> None:
    code = server.add_artifact("code-x", "code", {"x.py": b"print(1)\n"}, project=PROJECT)
    job = add_job(
        server,
        "job-unbuilt",
        "artifact",
        {"artifact": f"wandb-artifact://_id/{code['id']}", "entrypoint": ["python", "x.py"]},
    )
    item_id = server.push("default", container_item(job))

    run_agent(container_backend, agent_config(tmp_path, exit_when_idle=True), 120)

    failure = server.item(item_id)["failure"]
    assert failure["stage"] == "agent"
    assert "must be built to run on local-container" in failure["message"]
    assert "builder: {type: docker}" in failure["message"]
