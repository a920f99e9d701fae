"""Shared fixtures: every test gets its own data dir, config dir and SQLite queue file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_lib.backends import SqlBackend, open_backend


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
