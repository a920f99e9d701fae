"""Fixtures for the Kubernetes runner: a fake API server (see fake_api.py) whose pods run
on the local Docker engine, a kubeconfig pointing at it, a queue, agents that serve it."""

from __future__ import annotations

import asyncio
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
from tests.docker.conftest import busybox, docker_client  # noqa: F401  (fixtures)
from tests.kubernetes.fake_api import FakeKube

FAST = {
    "poll_interval": 0.02,
    "heartbeat_interval": 0.1,
    "stop_check_interval": 0.05,
    "status_interval": 5.0,
    "cancel_grace": 1.0,
}
NAMESPACE = "jobs"


@pytest.fixture
def kube(docker_client: Any) -> Iterator[FakeKube]:  # noqa: F811
    server = FakeKube(docker_client, uuid.uuid4().hex[:10], NAMESPACE)
    server.start()
    yield server
    server.stop()


@dataclass
class Harness:
    """One queue in its own SQLite file, a fake cluster, and agents that serve them."""

    kube: FakeKube
    data_dir: Path
    db_url: str
    queue: str
    kubeconfig: Path
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.db = open_backend(self.db_url)

    def agent_config(self, **overrides: Any) -> AgentConfig:
        values = {
            **FAST,
            "queues": [self.queue],
            "max_jobs": 4,
            "default_resource": "kubernetes",
            "exit_when_idle": True,
            "kube_config": self.kubeconfig,
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
            time.sleep(0.05)
        raise AssertionError(f"items not ended in {timeout}s: {[self.item(i) for i in ids]}")

    def job_dir(self, item_id: str) -> Path:
        info = self.item(item_id)
        assert info.run_id, f"item {item_id} has no run id: {info}"
        return job_dir_for(self.data_dir / "jobs", item_id, info.run_id)

    def output(self, item_id: str) -> str:
        """The job's output so far ("" before its first line)."""
        try:
            return (self.job_dir(item_id) / "output.log").read_text()
        except FileNotFoundError:
            return ""

    def jobs(self, item_id: str | None = None) -> list[dict[str, Any]]:
        found = self.kube.objects("jobs")
        if item_id is None:
            return found
        return [
            j for j in found if j["metadata"]["annotations"].get("launch-agent/item") == item_id
        ]

    def pods(self, item_id: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.kube.objects("pods")
            if p["metadata"]["labels"].get("launch-agent/item") == item_id
        ]


@pytest.fixture
def harness(kube: FakeKube, tmp_path: Path) -> Iterator[Harness]:
    queue = f"k8s-test-{uuid.uuid4().hex[:8]}"
    kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
    made = Harness(kube, tmp_path / "data", f"sqlite:///{tmp_path / 'q.db'}", queue, kubeconfig)
    yield made
    made.db.close()


def job_spec(image: str, script: str, **extra: Any) -> dict[str, Any]:
    """A launch spec: run a shell script in `image` as a Kubernetes Job."""
    return {
        "resource": "kubernetes",
        "docker": {"docker_image": image},
        "overrides": {"entry_point": ["sh", "-c", script]},
        **extra,
    }
