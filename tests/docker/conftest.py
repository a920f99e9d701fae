"""Fixtures for tests on a real Docker engine: local base images, a queue, an agent.

No image is pulled: the busybox and python images are built here from the host's files
(see images.py) once, and found again by tag on later runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent_lib import AgentConfig, LaunchAgent
from agent_lib.backends import open_backend
from agent_lib.backends.base import ItemInfo
from agent_lib.files import job_dir_for
from agent_lib.states import TERMINAL_ITEM_STATES
from tests.docker import images
from tests.services import missing_service

FAST = {
    "poll_interval": 0.02,
    "heartbeat_interval": 0.1,
    "stop_check_interval": 0.05,
    "status_interval": 5.0,
    "cancel_grace": 1.0,
}


@pytest.fixture(scope="session")
def docker_client() -> Any:
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:
        missing_service(f"no Docker engine reachable ({exc})")
    return client


@pytest.fixture(scope="session")
def busybox(docker_client: Any) -> str:
    """A ~2 MB image with /bin/sh and the busybox tools."""
    return images.busybox_image(docker_client)


@pytest.fixture(scope="session")
def python_base(docker_client: Any) -> str:
    """A Python 3.11 image with pip, setuptools and wheel (offline installs only)."""
    return images.python_image(docker_client)


@dataclass
class Harness:
    """One queue in its own SQLite file, and agents that serve it."""

    client: Any
    data_dir: Path
    db_url: str
    queue: str
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.db = open_backend(self.db_url)

    def agent_config(self, **overrides: Any) -> AgentConfig:
        values = {
            **FAST,
            "queues": [self.queue],
            "max_jobs": 4,
            "default_resource": "local-container",
            "exit_when_idle": True,
            **self.config,
            **overrides,
        }
        return AgentConfig.load(None, data_dir=self.data_dir, **values)

    def push(self, spec: dict[str, Any]) -> str:
        return self.db.push_to_run_queue(self.queue, spec, None, None, None)

    def run(self, timeout: float = 90, **overrides: Any) -> LaunchAgent:
        """Run an agent in this process until the queue is empty and its jobs ended."""
        agent = LaunchAgent(self.db, self.agent_config(**overrides))
        asyncio.run(asyncio.wait_for(agent.loop(), timeout))
        return agent

    def item(self, item_id: str) -> ItemInfo:
        info = self.db.get_item(item_id)
        assert info is not None
        return info

    def wait_ended(self, ids: list[str], timeout: float = 60) -> list[ItemInfo]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [self.item(i) for i in ids]
            if all(i.state in TERMINAL_ITEM_STATES for i in infos):
                return infos
            time.sleep(0.1)
        raise AssertionError(f"items not ended in {timeout}s: {[self.item(i) for i in ids]}")

    def job_dir(self, item_id: str) -> Path:
        info = self.item(item_id)
        assert info.run_id, f"item {item_id} has no run id: {info}"
        return job_dir_for(self.data_dir / "jobs", item_id, info.run_id)

    def output(self, item_id: str) -> str:
        return (self.job_dir(item_id) / "output.log").read_text()

    def containers(self, **filters: str) -> list[Any]:
        """This queue's containers (all states), as the SDK's Container objects.

        Listed with the low-level API and inspected one by one, skipping any removed in
        between: `client.containers.list(all=True)` raises NotFound in that case (a flake
        while the agent removes ended containers).
        """
        import docker.errors

        labels = [f"launch-agent.queue={self.queue}"]
        labels += [f"launch-agent.{k}={v}" for k, v in filters.items()]
        found = []
        for listed in self.client.api.containers(all=True, filters={"label": labels}):
            try:
                attrs = self.client.api.inspect_container(listed["Id"])
            except docker.errors.NotFound:
                continue
            found.append(self.client.containers.prepare_model(attrs))
        return found


@pytest.fixture
def harness(docker_client: Any, tmp_path: Path) -> Iterator[Harness]:
    queue = f"docker-test-{uuid.uuid4().hex[:8]}"
    made = Harness(docker_client, tmp_path / "data", f"sqlite:///{tmp_path / 'q.db'}", queue)
    yield made
    import docker.errors

    for container in made.containers():  # whatever a failed test left behind
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    made.db.close()


def sh(image: str, script: str, **extra: Any) -> dict[str, Any]:
    """A launch spec: run a shell script in `image` as a local container."""
    return {
        "resource": "local-container",
        "docker": {"docker_image": image},
        "overrides": {"entry_point": ["sh", "-c", script]},
        **extra,
    }
