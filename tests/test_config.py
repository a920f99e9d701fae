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
    assert config.poll_interval <= 1.0  # no 10 s polls (and pushes wake the agent at once)
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


def test_queue_names_must_be_usable(tmp_path: Path) -> None:
    for queues in ([""], ["  "], ["a\nb"], ["q" * 129]):
        with pytest.raises(ConfigError, match="argument: queues: Value error, a queue name"):
            AgentConfig.load(queues=queues)
    path = write(tmp_path / "c.yaml", "queues: [ok, '']\n")
    with pytest.raises(ConfigError, match=f"{path}: queues: .*must not be empty"):
        AgentConfig.load(path)


def test_numbers_must_be_finite_and_data_dir_given() -> None:
    with pytest.raises(ConfigError, match="poll_interval: Input should be a finite number"):
        AgentConfig.load(poll_interval=float("inf"))
    with pytest.raises(ConfigError, match="data_dir: Value error, must not be empty"):
        AgentConfig.load(data_dir="")


def test_unreadable_config_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        AgentConfig.load(tmp_path)
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"queues: [\xff]\n")
    with pytest.raises(ConfigError, match=r"not a text file \(byte 9 is not UTF-8\)"):
        AgentConfig.load(binary)
    numbered = write(tmp_path / "n.yaml", "1: 2\n")
    with pytest.raises(ConfigError, match="key 1 is not a name"):
        AgentConfig.load(numbered)


def test_unknown_environment_variables_are_warned_of(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LAUNCH_AGENT_BOGUS_KEY", "1")
    monkeypatch.setenv("LAUNCH_AGENT_QUEUE", "a")
    monkeypatch.setenv("LAUNCH_AGENT_TEST_WHATEVER", "1")
    monkeypatch.setenv("LAUNCH_AGENT_CRASH_AT", "nowhere")
    with caplog.at_level("WARNING", logger="agent_lib.config"):
        config = AgentConfig.load()
    assert config.queues == ["default"]  # ignored, but said so
    assert "LAUNCH_AGENT_BOGUS_KEY is not a config key, ignored" in caplog.text
    assert (
        "LAUNCH_AGENT_QUEUE is not a config key, ignored (did you mean LAUNCH_AGENT_QUEUES?)"
        in (caplog.text)
    )
    assert "TEST_WHATEVER" not in caplog.text and "CRASH_AT" not in caplog.text
