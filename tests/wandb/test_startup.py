"""Start-up as W&B's agent does it: queue ids, registration, the team warning, credentials."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from agent_lib.backends import open_backend
from agent_lib.backends.wandb import WandbBackend
from agent_lib.errors import BackendError, ConfigError
from tests.wandb.conftest import API_KEY, CLIENT_OPTIONS, ENTITY
from tests.wandb.server import FakeWandb


def register(backend: WandbBackend, queues: list[str], config: dict[str, Any] | None = None) -> str:
    return backend.create_launch_agent(
        ENTITY, "model-registry", queues, "host-1", config or {}, "launch-agent@0.1.0"
    )


def test_registration_resolves_queue_ids_and_reads_the_record_back(
    server: FakeWandb, backend: WandbBackend
) -> None:
    gpu = server.add_queue("gpu")
    server.add_queue("other")

    agent_id = register(backend, ["gpu"], {"max_jobs": 2, "queues": ["gpu"]})
    record = backend.get_launch_agent(agent_id)

    assert server.operations() == [
        "ProjectRunQueues",
        "createLaunchAgent",
        "EntityIsTeam",
        "LaunchAgent",
    ]
    queues_call = server.calls_of("ProjectRunQueues")[0]
    assert queues_call.variables == {"entity": ENTITY, "projectName": "model-registry"}
    create = server.calls_of("createLaunchAgent")[0].variables
    assert create["queues"] == [gpu]
    assert create["hostname"] == "host-1"
    assert create["version"] == "launch-agent@0.1.0"
    assert json.loads(create["agentConfig"]) == {"max_jobs": 2, "queues": ["gpu"]}
    assert record.id == agent_id
    assert record.name == "agent-1"
    assert record.queues == [gpu]
    assert record.stop_polling is False
    assert record.heartbeat_at is not None


def test_agent_config_is_sent_without_secrets(server: FakeWandb, backend: WandbBackend) -> None:
    config = {
        "environment": {"type": "aws", "secret_access_key": "AKIAsecretvalue123"},
        "registry": {"url": "https://user:hunter2pass@registry.example.com/v2"},
        "builder": {"type": "noop"},
    }
    register(backend, ["default"], config)

    sent = server.calls_of("createLaunchAgent")[0].variables["agentConfig"]
    assert "AKIAsecretvalue123" not in sent
    assert "hunter2pass" not in sent
    assert json.loads(sent)["builder"] == {"type": "noop"}


def test_missing_queue_fails_naming_the_missing_and_the_available_ones(
    server: FakeWandb, backend: WandbBackend
) -> None:
    server.add_queue("cpu")

    with pytest.raises(ConfigError) as err:
        register(backend, ["default", "gpu", "tpu"])

    message = str(err.value)
    assert "gpu, tpu not found in acme/model-registry" in message
    assert "available queues: cpu, default" in message
    assert "createLaunchAgent" not in server.operations()


def test_an_entity_without_queues_project_fails_clearly(
    server: FakeWandb, backend: WandbBackend
) -> None:
    with pytest.raises(BackendError, match="could not read the run queues of nobody/model-reg"):
        backend.create_launch_agent("nobody", "model-registry", ["default"], "h", {}, "v")


def test_team_entity_gets_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with FakeWandb(API_KEY, "research", is_team=True) as team:
        team.add_queue("default")
        backend = WandbBackend(team.base_url, **CLIENT_OPTIONS)
        caplog.set_level(logging.WARNING)
        backend.create_launch_agent("research", "model-registry", ["default"], "h", {}, "v")
        backend.close()
    assert "running on team entity (research)" in caplog.text
    assert "members of this team will be able to run code on this machine" in caplog.text


def test_personal_entity_gets_no_team_warning(
    backend: WandbBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    register(backend, ["default"])
    assert "team entity" not in caplog.text


def test_entity_is_required(server: FakeWandb, backend: WandbBackend) -> None:
    with pytest.raises(ConfigError, match="needs an entity"):
        backend.create_launch_agent(None, "model-registry", ["default"], "h", {}, "v")


def test_entity_from_wandb_entity(server: FakeWandb, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_ENTITY", ENTITY)
    backend = WandbBackend(server.base_url, **CLIENT_OPTIONS)
    assert backend.create_launch_agent(None, "model-registry", ["default"], "h", {}, "v")
    backend.close()


def test_no_api_key_says_where_to_put_one(
    server: FakeWandb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY")
    with pytest.raises(ConfigError, match="set WANDB_API_KEY, or run `wandb login`"):
        WandbBackend(server.base_url)


def test_netrc_is_the_fallback_for_the_key(
    server: FakeWandb, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1\n  login user\n  password {API_KEY}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("WANDB_API_KEY")

    backend = WandbBackend(server.base_url, **CLIENT_OPTIONS)
    assert register(backend, ["default"])
    backend.close()


def test_backend_urls_select_the_wandb_backend(
    server: FakeWandb, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = open_backend(f"wandb+{server.base_url}/")
    assert isinstance(explicit, WandbBackend)
    assert explicit.base_url == server.base_url

    monkeypatch.setenv("WANDB_BASE_URL", server.base_url + "/graphql")
    for url in ("wandb", "wandb://"):
        from_env = open_backend(url)
        assert isinstance(from_env, WandbBackend)
        assert from_env.base_url == server.base_url

    monkeypatch.delenv("WANDB_BASE_URL")
    default = open_backend("wandb")
    assert isinstance(default, WandbBackend)
    assert default.base_url == "https://api.wandb.ai"
    for backend in (explicit, from_env, default):
        backend.close()


def test_credentials_in_the_base_url_are_refused() -> None:
    with pytest.raises(ConfigError, match="must not carry credentials"):
        open_backend("wandb+https://api:k3y-value@wandb.example.com")
