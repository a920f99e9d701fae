"""One real Prefect server for the whole session (about 10 s to start), never nested."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import missing_service

# The real CLI, as a user runs it (the venv's `prefect` script).
PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYMENT_NAMES = ("launch-agent/agent", "drain/drain", "submit/submit")

# The ephemeral server's telemetry heartbeat fights the tests for SQLite's write lock.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A Prefect server on 127.0.0.1 with a throw-away database; yields its API URL."""
    try:
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness
    except ImportError as exc:  # pragma: no cover - prefect is a dependency
        missing_service(f"prefect is not installed: {exc}")
        raise
    with prefect_test_harness(server_startup_timeout=90):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def flow_settings(tmp_path: Path, db_url: str) -> dict[str, Any]:
    """Parameters for the agent flows: this test's queue DB and data dir, fast intervals."""
    return {
        "backend_url": db_url,
        "status_seconds": 1.0,
        "settings": {
            "data_dir": str(tmp_path / "data"),
            "poll_interval": 0.05,
            "heartbeat_interval": 0.2,
            "stop_check_interval": 0.2,
            "cancel_grace": 2.0,
        },
    }


async def delete_deployments() -> None:
    """Delete the project's deployments (agent, drain, submit) if they exist."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        for name in DEPLOYMENT_NAMES:
            with contextlib.suppress(ObjectNotFound):
                deployment = await client.read_deployment_by_name(name)
                await client.delete_deployment(deployment.id)


async def read_deployment(name: str) -> Any:
    from prefect import get_client

    async with get_client() as client:
        return await client.read_deployment_by_name(name)


@pytest.fixture
def no_deployment_left(prefect_server: str) -> Iterator[None]:
    """Other tests create runs of these deployments: leave none with this test's parameters."""
    yield
    asyncio.run(delete_deployments())
