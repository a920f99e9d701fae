"""What a job's real `wandb.init()` sees, on the SQL backend and on the W&B backend.

The job (tests/wandb/sdk_job.py) calls the real SDK in offline mode and writes down what the
run got from the agent's environment: id, project, entity, name, config (one too large for
one variable, so it arrives as WANDB_CONFIG_0..n), sweep id, resume, artifacts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from agent_lib import AgentConfig, LaunchAgent
from agent_lib.backends import open_backend
from agent_lib.backends.wandb import WandbBackend
from agent_lib.environment import MAX_ENV_LENGTH, job_environment, split_json
from agent_lib.spec import LaunchSpec
from tests.wandb.conftest import ENTITY, agent_config, run_agent
from tests.wandb.server import FakeWandb

SDK_JOB = Path(__file__).with_name("sdk_job.py")
# Over W&B's 32670 characters for one variable: the job gets WANDB_CONFIG_0, _1, _2.
BIG_CONFIG = {"lr": 0.01, "layers": [64, 32], "notes": "x" * 70_000}
ARTIFACTS = {"dataset:latest": "acme/demo/dataset:v3"}


def contract_spec(report: Path, register: bool, **extra: Any) -> dict[str, Any]:
    command = [sys.executable, str(SDK_JOB), str(report)]
    spec: dict[str, Any] = {
        "resource": "local-process",
        "entity": ENTITY,
        "project": "vision",
        "name": "my-run",
        "author": "alice",
        "overrides": {
            "entry_point": command + (["--register"] if register else []),
            "run_config": BIG_CONFIG,
            "artifacts": ARTIFACTS,
        },
    }
    spec.update(extra)
    return spec


def job_env(tmp_path: Path) -> dict[str, str]:
    """Offline: the SDK sends nothing; its files stay in the test's folder."""
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-dir")}


def check_seen(seen: dict[str, Any], run_id: str, sweep: str | None, resume: bool) -> None:
    assert seen["id"] == run_id
    assert seen["project"] == "vision"
    assert seen["entity"] == ENTITY
    assert seen["name"] == "my-run"
    assert seen["config"] == BIG_CONFIG  # joined again from WANDB_CONFIG_0..n
    assert {"WANDB_CONFIG_0", "WANDB_CONFIG_1", "WANDB_CONFIG_2"} <= set(seen["env"])
    assert "WANDB_CONFIG" not in seen["env"]
    assert seen["sweep_id"] == sweep
    assert seen["resume"] == ("allow" if resume else None)
    assert seen["launch"] is True
    assert seen["artifacts"] == ARTIFACTS
    assert seen["username"] == "alice"
    assert seen["file_overrides"] == "{}"


def test_the_real_sdk_sees_the_contract_on_the_sql_backend(tmp_path: Path) -> None:
    backend = open_backend(f"sqlite:///{tmp_path / 'queue.db'}")
    fresh, resumed = tmp_path / "fresh.json", tmp_path / "resumed.json"
    backend.push_to_run_queue("default", contract_spec(fresh, False, run_id="run0001"))
    backend.push_to_run_queue(
        "default", contract_spec(resumed, False, run_id="run0002", _resume_count=1)
    )
    config = AgentConfig.load(
        None,
        data_dir=tmp_path,
        queues=["default"],
        entity=ENTITY,
        exit_when_idle=True,
        poll_interval=0.02,
        max_jobs=2,
        job_env=job_env(tmp_path),
    )
    agent = LaunchAgent(backend, config)
    import asyncio

    asyncio.run(asyncio.wait_for(agent.loop(), 120))
    backend.close()

    assert agent.outcomes == {"finished": 2}
    check_seen(json.loads(fresh.read_text()), "run0001", None, resume=False)
    check_seen(json.loads(resumed.read_text()), "run0002", None, resume=True)


def test_the_real_sdk_sees_the_contract_on_the_wandb_backend(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    server.state.projects.add((ENTITY, "vision"))
    server.state.sweeps[(ENTITY, "vision", "sw1")] = {"id": "U3dlZXA6MQ==", "state": "RUNNING"}
    report = tmp_path / "seen.json"
    item_id = server.push("default", contract_spec(report, True, sweep_id="sw1"))

    agent = run_agent(
        backend,
        agent_config(tmp_path, exit_when_idle=True, job_env=job_env(tmp_path)),
        timeout=120,
    )

    assert agent.outcomes == {"finished": 1}, server.item(item_id)["failure"]
    run_id = server.item(item_id)["associatedRunId"]
    check_seen(json.loads(report.read_text()), run_id, "sw1", resume=False)


def test_environment_follows_wandbs_names_and_formats() -> None:
    spec = LaunchSpec.parse(
        {
            "entity": "e",
            "project": "p",
            "author": "alice",
            "docker": {"docker_image": "trainer:1"},
            "overrides": {"run_config": {"a": 1}, "files": {"cfg.yaml": {"x": 1}}},
        }
    )
    env = job_environment(spec, "item1", "q", "r1", "agent-entity", job_artifact="e/p/job:v1")
    assert env["WANDB_CONFIG"] == '{"a": 1}'
    assert env["WANDB_DOCKER"] == "trainer:1"
    assert env["WANDB_USERNAME"] == "alice"
    assert json.loads(env["WANDB_LAUNCH_FILE_OVERRIDES"]) == {"cfg.yaml": {"x": 1}}
    assert json.loads(env["WANDB_ARTIFACTS"]) == {"_wandb_job": "e/p/job:v1"}
    # An item with its own key is not run as its author (W&B's rule).
    own_key = LaunchSpec.parse({"author": "alice", "_wandb_api_key": "k" * 40})
    assert "WANDB_USERNAME" not in job_environment(own_key, "i", "q", "r", None)


def test_long_json_is_split_in_wandbs_parts() -> None:
    value = {"k": "v" * (2 * MAX_ENV_LENGTH)}
    parts = split_json("WANDB_CONFIG", value)
    assert list(parts) == ["WANDB_CONFIG_0", "WANDB_CONFIG_1", "WANDB_CONFIG_2"]
    assert all(len(p) <= MAX_ENV_LENGTH for p in parts.values())
    assert json.loads("".join(parts.values())) == value
