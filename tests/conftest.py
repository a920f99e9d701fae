"""Shared fixtures: every test gets its own data dir, config dir and SQLite queue file;
a Docker engine and its local base images for the tests that run containers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_lib.backends import SqlBackend, open_backend
from tests.docker import images
from tests.services import missing_service


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's config or writes to the user's queue."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    for name in (
        "LAUNCH_AGENT_CONFIG",
        "LAUNCH_AGENT_BACKEND_URL",
        "DATABASE_URL",
        "WANDB_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture
def backend(db_url: str) -> Iterator[SqlBackend]:
    db = open_backend(db_url)
    yield db
    db.close()


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
