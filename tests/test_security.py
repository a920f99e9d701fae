"""Security: what secure mode refuses, what a job can see, what is never shown.

Real agents on a real SQLite file, real job processes. Every refused item must fail in
phase `agent` naming the rule, and must not have run (its marker file never appears).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_lib import ItemState
from agent_lib.backends import SqlBackend
from tests.helpers import PYTHON, fast_config, run_agent, sh_job

AGENT_DB_PASSWORD = "db-password-9f8e7d"
AGENT_WANDB_KEY = "agent-wandb-key-0a1b2c3d"
ITEM_KEY = "item-wandb-key-5e6f7a8b"


def touch_job(marker: Path) -> dict[str, Any]:
    return {
        "entry_point": [
            PYTHON,
            "-c",
            f"import sys; open({str(marker)!r}, 'w').write(' '.join(sys.argv[1:]))",
        ]
    }


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "ran"


def secure_agent(backend: SqlBackend, tmp_path: Path, marker: Path, **job: Any) -> None:
    jobs = {"train": {**touch_job(marker), **job}}
    run_agent(backend, fast_config(tmp_path, secure_mode=True, jobs=jobs, exit_when_idle=True))


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ({"overrides": {"args": ["sh", "-c", "touch /tmp/pwned"]}}, "only named jobs run"),
        ({"overrides": {"entry_point": ["sh", "-c", "true"]}}, "only named jobs run"),
        ({"job": "train", "overrides": {"entry_point": ["sh"]}}, "overrides.entry_point"),
        ({"job": "train", "overrides": {"args": ["--evil"]}}, "does not allow changing its args"),
        (
            {"job": "train", "resource_args": {"local-process": {"env": {"LD_PRELOAD": "/x.so"}}}},
            "resource_args.local-process is not allowed",
        ),
        (
            {"job": "train", "resource_args": {"local-process": {"cwd": "/"}}},
            "resource_args.local-process is not allowed",
        ),
        (
            {"job": "train", "resource_args": {"local-container": {"env": {"A": "1"}}}},
            "resource_args.local-container.env is not allowed",
        ),
        ({"job": "train", "docker": {"docker_image": "evil:1"}}, "may not choose the image"),
        ({"job": "train", "git": {"url": "https://example.invalid/x"}}, "may not give source"),
        ({"job": "other"}, "'other' is not one of this agent's jobs"),
    ],
)
def test_secure_mode_refuses_what_changes_what_runs(
    backend: SqlBackend, tmp_path: Path, marker: Path, spec: dict[str, Any], rule: str
) -> None:
    item_id = backend.push_to_run_queue("default", spec)

    secure_agent(backend, tmp_path, marker)

    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FAILED
    assert info.failure_phase == "agent"
    assert "secure_mode" in (info.failure_message or "") and rule in (info.failure_message or "")
    assert not marker.exists(), "a refused item ran"


def test_secure_mode_runs_named_jobs_with_their_allowed_changes(
    backend: SqlBackend, tmp_path: Path, marker: Path
) -> None:
    plain = backend.push_to_run_queue(
        "default", {"job": "train", "overrides": {"run_config": {"lr": 1}}}
    )
    with_args = backend.push_to_run_queue(
        "default", {"job": "train", "overrides": {"args": ["--epochs", "3"]}}
    )

    secure_agent(backend, tmp_path, marker, allow_args=True)

    for item_id in (plain, with_args):
        info = backend.get_item(item_id)
        assert info is not None and info.state is ItemState.FINISHED, info
    assert marker.read_text() in ("", "--epochs 3")


def env_dump_job(out: Path) -> dict[str, Any]:
    code = f"import json, os; open({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))"
    return {"resource": "local-process", "overrides": {"entry_point": [PYTHON, "-c", code]}}


def test_a_job_sees_none_of_the_agents_secrets(
    backend: SqlBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://agent:{AGENT_DB_PASSWORD}@db/queue")
    monkeypatch.setenv("WANDB_API_KEY", AGENT_WANDB_KEY)
    monkeypatch.setenv("LAUNCH_AGENT_JOB_ENV", json.dumps({"SHARED": "for-every-job"}))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-1234567")
    monkeypatch.setenv("FROM_AGENT", "visible-if-named")
    seen = tmp_path / "env.json"
    spec = {**env_dump_job(seen), "_wandb_api_key": ITEM_KEY}
    item_id = backend.push_to_run_queue("default", spec)

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True))

    assert backend.get_item(item_id).state is ItemState.FINISHED  # type: ignore[union-attr]
    env = json.loads(seen.read_text())
    text = seen.read_text()
    assert AGENT_DB_PASSWORD not in text and "DATABASE_URL" not in env
    assert AGENT_WANDB_KEY not in text
    assert "aws-secret-1234567" not in text and "FROM_AGENT" not in env
    assert not [k for k in env if k.startswith("LAUNCH_AGENT_")]
    assert env["WANDB_API_KEY"] == ITEM_KEY, "the item's own key reaches its job"
    assert env["SHARED"] == "for-every-job" and "PATH" in env and "WANDB_RUN_ID" in env


@pytest.mark.parametrize(
    ("inherit", "passed", "held_back"),
    [
        (["FROM_AGENT"], {"FROM_AGENT"}, {"OTHER_VAR", "DATABASE_URL"}),
        (True, {"FROM_AGENT", "OTHER_VAR"}, {"DATABASE_URL", "WANDB_API_KEY"}),
    ],
)
def test_inherit_env_passes_what_it_names(
    backend: SqlBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inherit: Any,
    passed: set[str],
    held_back: set[str],
) -> None:
    monkeypatch.setenv("FROM_AGENT", "a")
    monkeypatch.setenv("OTHER_VAR", "b")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://agent:{AGENT_DB_PASSWORD}@db/queue")
    monkeypatch.setenv("WANDB_API_KEY", AGENT_WANDB_KEY)
    seen = tmp_path / "env.json"
    backend.push_to_run_queue("default", env_dump_job(seen))

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True, inherit_env=inherit))

    env = json.loads(seen.read_text())
    assert passed <= set(env)
    assert not held_back & set(env)


def cli(db_url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "agent_lib.cli", *args, "--backend", db_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout + done.stderr


def test_an_items_key_is_masked_in_every_output(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    """The job prints its own key and fails: the log tail, the database, the CLI mask it."""
    printing = backend.push_to_run_queue(
        "default", {**sh_job('echo "my key is $WANDB_API_KEY"; exit 3'), "_wandb_api_key": ITEM_KEY}
    )
    wrong_type = backend.push_to_run_queue(
        "default", {**sh_job("true"), "_wandb_api_key": [ITEM_KEY + "-in-a-list"]}
    )

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True))

    for item_id in (printing, wrong_type):
        info = backend.get_item(item_id)
        assert info is not None and info.state is ItemState.FAILED
        stored = json.dumps([info.failure_message, info.files])
        assert ITEM_KEY not in stored, stored
    assert "my key is ***" in json.dumps(backend.get_item(printing).files)  # type: ignore[union-attr]
    for job_dir in (tmp_path / "jobs").iterdir():
        for path in job_dir.rglob("error.log"):
            assert ITEM_KEY not in path.read_text()
    outputs = [
        cli(db_url, "list", "--json"),
        cli(db_url, "show", printing),
        cli(db_url, "show", printing, "--json"),
        cli(db_url, "show", wrong_type),
        cli(db_url, "show", wrong_type, "--json"),
    ]
    for output in outputs:
        assert ITEM_KEY not in output, output
