"""Fixtures for the W&B backend: a validating fake W&B server and a backend pointed at it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_lib import AgentConfig, LaunchAgent
from agent_lib.backends.wandb import WandbBackend
from tests.wandb.server import FakeWandb

API_KEY = "wk-test-5f3a9c0e7b214d68a1c2e9d4b7a03f61-secret"
ENTITY = "acme"
FAST: dict[str, Any] = {
    "poll_interval": 0.02,
    "heartbeat_interval": 0.1,
    "stop_check_interval": 0.05,
    "status_interval": 5.0,
    "cancel_grace": 2.0,
}
# Polls, stop checks and the run-start grace period at test speed (W&B's: 1/10 s, 10 s, 60 s).
FAST_BACKEND: dict[str, Any] = {
    "min_poll_interval": 0.0,
    "stop_check_interval": 0.0,
    "run_info_grace_period": 0.08,
    "run_info_first_interval": 0.01,
}
CLIENT_OPTIONS: dict[str, Any] = {"backoff_base": 0.01, "max_retries": 3, "timeout": (2.0, 10.0)}


@pytest.fixture(autouse=True)
def wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The key in WANDB_API_KEY; no other W&B settings or .netrc leak in from the machine."""
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FakeWandb]:
    """A fake W&B with entity `acme` and queue `default`; fails the test on invalid requests."""
    with FakeWandb(API_KEY, ENTITY) as fake:
        fake.add_queue("default")
        yield fake
    invalid = fake.invalid_calls()
    assert not invalid, f"requests that W&B's schema rejects: {invalid}"


@pytest.fixture
def backend(server: FakeWandb) -> Iterator[WandbBackend]:
    wb = WandbBackend(server.base_url, **FAST_BACKEND, **CLIENT_OPTIONS)
    yield wb
    wb.close()


def agent_config(data_dir: Path, **overrides: Any) -> AgentConfig:
    values = {"queues": ["default"], "entity": ENTITY, **FAST, **overrides}
    return AgentConfig.load(None, data_dir=data_dir, **values)


def run_agent(backend: WandbBackend, config: AgentConfig, timeout: float = 60) -> LaunchAgent:
    """Run the real agent against the fake W&B until it stops by itself."""
    agent = LaunchAgent(backend, config)
    asyncio.run(asyncio.wait_for(agent.loop(), timeout))
    return agent
