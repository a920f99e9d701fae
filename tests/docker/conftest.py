"""Fixtures for tests on a real Docker engine: local base images, a queue, an agent.

No image is pulled: the busybox and python images are built here from the host's files
(see images.py) once, and found again by tag on later runs.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import QueueHarness


@dataclass(kw_only=True)
class Harness(QueueHarness):
    """One queue in its own SQLite file, and agents that run its items as containers."""

    client: Any
    resource: str = "local-container"

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
    made = Harness(
        client=docker_client,
        data_dir=tmp_path / "data",
        db_url=f"sqlite:///{tmp_path / 'q.db'}",
        queue=queue,
    )
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
