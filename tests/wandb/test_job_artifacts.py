"""W&B job artifacts end to end: the real agent, W&B's own client fetching the jobs from the
test W&B server (every GraphQL request validated against the schema), real processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent_lib import AgentConfig, LaunchAgent
from agent_lib.backends import open_backend
from agent_lib.backends.wandb import WandbBackend
from tests.wandb.conftest import API_KEY, ENTITY, agent_config, run_agent
from tests.wandb.job_artifacts import PROJECT, add_job, git_repo, main_py, tiny_wheel
from tests.wandb.server import FakeWandb


def item(job: str, report: Path, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "job": job,
        "resource": "local-process",
        "entity": ENTITY,
        "project": PROJECT,
        "resource_args": {"local-process": {"env": {"REPORT": str(report)}}},
    }
    spec.update(extra)
    return spec


def test_an_artifact_job_runs_its_code_in_a_venv_with_its_requirements(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    wheels = tiny_wheel(tmp_path / "wheels").parent
    code = server.add_artifact(
        "code-train", "code", {"main.py": main_py("artifact-v0")}, project=PROJECT
    )
    # As W&B's create_job writes it: the code artifact by id.
    job = add_job(
        server,
        "job-train",
        "artifact",
        {"artifact": f"wandb-artifact://_id/{code['id']}", "entrypoint": ["python", "main.py"]},
        requirements="tinylib==1.0\n",
    )
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    server.push("default", item(job, first, overrides={"args": ["--epochs", "3"]}))
    server.push("default", item(job, second))
    pip_args = ["--no-index", "--find-links", str(wheels)]

    agent = run_agent(
        backend,
        agent_config(tmp_path, exit_when_idle=True, builder={"pip_args": pip_args}),
        timeout=120,
    )

    assert agent.outcomes == {"finished": 2}
    seen = json.loads(first.read_text())
    assert seen["version"] == "artifact-v0"
    assert seen["argv"] == ["--epochs", "3"]  # the item's args, as under W&B
    assert seen["tinylib"] == "1.0"  # installed from the job's requirements, offline
    venvs = list((tmp_path / "venvs").glob("*/bin/python"))
    assert len(venvs) == 1  # same requirements: one environment, made once
    assert seen["prefix"] == str(venvs[0].parent.parent)
    assert Path(seen["cwd"]).name == "work"
    assert "requirements.frozen.txt" in seen["files"]
    assert json.loads(seen["artifacts"]) == {"_wandb_job": job}
    assert json.loads(second.read_text())["prefix"] == seen["prefix"]
    # W&B's own client fetched both artifacts: its queries, then the signed file URLs.
    ops = server.operations()
    for op in ("ArtifactMembershipByName", "ArtifactByID", "GetArtifactMembershipFileUrls"):
        assert op in ops
    assert any(path.endswith("/files/main.py") for path in server.downloads)
    for path in (tmp_path / "jobs").rglob("*"):  # fetch.log, venv.log, ...: no key
        if path.is_file():
            assert API_KEY not in path.read_text(errors="replace"), path


def test_a_repo_job_runs_from_its_commit(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    commits = git_repo(repo, ["repo-v1", "repo-v2"])
    job = add_job(
        server,
        "job-repo",
        "repo",
        {
            "git": {"remote": f"file://{repo}", "commit": commits[0]},
            "entrypoint": ["python3", "main.py"],
        },
    )
    report = tmp_path / "seen.json"
    server.push("default", item(job, report))

    agent = run_agent(backend, agent_config(tmp_path, exit_when_idle=True), timeout=120)

    assert agent.outcomes == {"finished": 1}
    seen = json.loads(report.read_text())
    assert seen["version"] == "repo-v1"  # the job's commit, not the branch's head
    assert seen["tinylib"] is None  # no requirements: an environment with nothing in it
    assert "/venvs/" in seen["python"]


@pytest.mark.parametrize(
    ("source_type", "source", "expected"),
    [
        ("image", {"image": "trainer:1"}, "image job (trainer:1): it runs on local-container"),
        (
            "artifact",
            {"artifact": "acme/demo/nb:v0", "entrypoint": ["python", "nb.ipynb"], "notebook": True},
            "a notebook job is not supported",
        ),
        ("dataset", {}, "source type 'dataset' is not supported"),
        ("repo", {"git": {"remote": "file:///nowhere"}}, "malformed source: git.commit missing"),
        (
            "repo",
            {"git": {"remote": "file:///nowhere", "commit": "--upload-pack=touch /tmp/x"}},
            "git.commit is not a commit hash",
        ),
        (
            "repo",
            {"git": {"remote": "file:///nowhere", "commit": "abc123"}, "entrypoint": ["x"]},
            "`git clone` of file:///nowhere at abc123 failed",
        ),
    ],
)
def test_a_job_that_cannot_run_here_fails_in_phase_agent_saying_why(
    server: FakeWandb,
    backend: WandbBackend,
    tmp_path: Path,
    source_type: str,
    source: dict[str, Any],
    expected: str,
) -> None:
    job = add_job(server, "job-x", source_type, source)
    item_id = server.push("default", item(job, tmp_path / "never.json"))

    agent = run_agent(backend, agent_config(tmp_path, exit_when_idle=True), timeout=120)

    failure = server.item(item_id)["failure"]
    assert agent.outcomes == {"failed": 1}
    assert failure["stage"] == "agent"
    assert expected in failure["message"]


def test_a_job_that_does_not_exist_fails_in_phase_agent(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    item_id = server.push("default", item(f"{ENTITY}/{PROJECT}/no-such-job:latest", tmp_path))

    run_agent(backend, agent_config(tmp_path, exit_when_idle=True), timeout=120)

    failure = server.item(item_id)["failure"]
    assert failure["stage"] == "agent"
    assert "could not fetch it from W&B" in failure["message"]
    assert "no-such-job" in failure["message"]


def test_a_job_artifact_on_the_sql_backend_uses_the_agents_wandb_login(
    server: FakeWandb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's WANDB_BASE_URL / WANDB_API_KEY fetch the job; the job never gets the key."""
    code = (
        "import json, os\n"
        "json.dump({k: v for k, v in os.environ.items() if k.startswith('WANDB_')},"
        " open(os.environ['REPORT'], 'w'))\n"
    )
    artifact = server.add_artifact("code-sql", "code", {"run.py": code.encode()}, project=PROJECT)
    job = add_job(
        server,
        "job-sql",
        "artifact",
        {"artifact": f"wandb-artifact://_id/{artifact['id']}", "entrypoint": ["python", "run.py"]},
    )
    monkeypatch.setenv("WANDB_BASE_URL", server.base_url)
    backend = open_backend(f"sqlite:///{tmp_path / 'queue.db'}")
    report = tmp_path / "seen.json"
    item_id = backend.push_to_run_queue("default", item(job, report))
    config = AgentConfig.load(
        None, data_dir=tmp_path, queues=["default"], exit_when_idle=True, poll_interval=0.02
    )
    agent = LaunchAgent(backend, config)

    asyncio.run(asyncio.wait_for(agent.loop(), 120))

    info = backend.get_item(item_id)
    backend.close()
    assert agent.outcomes == {"finished": 1}, info
    seen = json.loads(report.read_text())
    assert json.loads(seen["WANDB_ARTIFACTS"]) == {"_wandb_job": job}
    assert "WANDB_API_KEY" not in seen  # the agent's own key stays the agent's
