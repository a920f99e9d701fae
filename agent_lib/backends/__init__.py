"""Queue backends: where run queues live. `open_backend` picks one from a URL."""

from __future__ import annotations

from agent_lib.backends.base import AgentRecord, Backend, ItemInfo, QueueSummary
from agent_lib.backends.sql import SqlBackend

__all__ = ["AgentRecord", "Backend", "ItemInfo", "QueueSummary", "SqlBackend", "open_backend"]


def open_backend(url: str, lease_seconds: float = 60.0) -> SqlBackend:
    """Open the backend a URL names: `sqlite:///path` or `postgresql://...`."""
    if url.startswith(("sqlite", "postgresql", "postgres")):
        return SqlBackend(url.replace("postgres://", "postgresql://", 1), lease_seconds)
    raise ValueError(f"unsupported backend URL {url!r}: use sqlite:///PATH or postgresql://...")
