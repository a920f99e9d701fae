"""Fixtures for the Kubernetes runner: a fake API server (see fake_api.py) whose pods run
on the local Docker engine, a kubeconfig pointing at it, a queue, agents that serve it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import QueueHarness
from tests.kubernetes.fake_api import FakeKube

NAMESPACE = "jobs"


@pytest.fixture
def kube(docker_client: Any) -> Iterator[FakeKube]:
    server = FakeKube(docker_client, uuid.uuid4().hex[:10], NAMESPACE)
    server.start()
    yield server
    server.stop()


@dataclass(kw_only=True)
class Harness(QueueHarness):
    """One queue in its own SQLite file, a fake cluster, and agents that serve them."""

    kube: FakeKube
    kubeconfig: Path
    resource: str = "kubernetes"

    def agent_defaults(self) -> dict[str, Any]:
        return {"kube_config": self.kubeconfig}

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
    made = Harness(
        kube=kube,
        kubeconfig=kubeconfig,
        data_dir=tmp_path / "data",
        db_url=f"sqlite:///{tmp_path / 'q.db'}",
        queue=queue,
    )
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
