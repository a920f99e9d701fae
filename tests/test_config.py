"""Config precedence (arguments > environment > YAML file > defaults) and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_lib.config import AgentConfig
from agent_lib.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_match_wandb(tmp_path: Path) -> None:
    config = AgentConfig.load()
    assert config.queues == ["default"]
    assert config.max_jobs == 1
    assert config.project == "model-registry"
    assert config.secure_mode is False
    assert config.poll_interval < 1.0  # no 10 s polls
    assert config.resolved_backend_url.endswith("launch-agent/queue.db")
    assert config.resolved_backend_url.startswith("sqlite:///")


def test_arguments_beat_environment_beat_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.yaml", "max_jobs: 2\nmax_schedulers: 7\nqueues: [from-file]\n")
    monkeypatch.setenv("LAUNCH_AGENT_MAX_JOBS", "3")
    monkeypatch.setenv("LAUNCH_AGENT_QUEUES", "env-a, env-b")

    from_file_and_env = AgentConfig.load(path)
    assert from_file_and_env.max_jobs == 3
    assert from_file_and_env.queues == ["env-a", "env-b"]
    assert from_file_and_env.max_schedulers == 7

    with_args = AgentConfig.load(path, max_jobs=4, queues=["arg"])
    assert with_args.max_jobs == 4
    assert with_args.queues == ["arg"]


def test_config_file_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "launch-config.yaml", "entity: team\nmax_jobs: -1\n")
    monkeypatch.setenv("LAUNCH_AGENT_CONFIG", str(path))
    config = AgentConfig.load()
    assert config.entity == "team"
    assert config.job_limit == float("inf")


def test_default_config_file_location(tmp_path: Path) -> None:
    folder = tmp_path / "xdg-config" / "launch-agent"
    folder.mkdir(parents=True)
    write(folder / "launch-config.yaml", "queues: [home]\n")
    assert AgentConfig.load().queues == ["home"]


def test_errors_name_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "max_jobs: lots\nmax_job: 3\n")
    with pytest.raises(ConfigError) as info:
        AgentConfig.load(path)
    text = str(info.value)
    assert f"{path}: max_jobs: Input should be a valid integer" in text
    assert f"{path}: max_job: unknown key" in text


def test_errors_name_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUNCH_AGENT_MAX_JOBS", "-5")
    with pytest.raises(ConfigError, match="environment variable LAUNCH_AGENT_MAX_JOBS: max_jobs"):
        AgentConfig.load()


def test_missing_and_broken_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        AgentConfig.load(tmp_path / "nope.yaml")
    broken = write(tmp_path / "broken.yaml", "queues: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        AgentConfig.load(broken)
    listy = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        AgentConfig.load(listy)


def test_public_dict_leaves_out_project_and_jobs() -> None:
    config = AgentConfig.load(jobs={"t": {"entry_point": ["x"]}})
    public = config.public_dict()
    assert "project" not in public and "jobs" not in public
    assert public["max_jobs"] == 1
