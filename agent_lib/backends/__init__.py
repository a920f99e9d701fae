"""Queue backends: where run queues live. `open_backend` picks one from a URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_lib.backends.sql_url import display_url, is_sql_url, sqlalchemy_url
from agent_lib.backends.wandb_auth import is_wandb_url
from agent_lib.lazy import lazy_exports

if TYPE_CHECKING:
    from agent_lib.backends.base import AgentRecord, Backend, ItemInfo, QueueSummary
    from agent_lib.backends.sql import SqlBackend
    from agent_lib.backends.wandb import WandbBackend

# Loaded on first use: the package's light modules (URLs, item keys) must not cost the
# import of SQLAlchemy, pydantic or the W&B client (requests) to whoever needs only them.
_LAZY = {
    "AgentRecord": "agent_lib.backends.base",
    "Backend": "agent_lib.backends.base",
    "ItemInfo": "agent_lib.backends.base",
    "QueueSummary": "agent_lib.backends.base",
    "SqlBackend": "agent_lib.backends.sql",
    "WandbBackend": "agent_lib.backends.wandb",
}

__all__ = [
    "AgentRecord",
    "Backend",
    "ItemInfo",
    "QueueSummary",
    "SqlBackend",
    "WandbBackend",
    "open_backend",
]


def open_backend(url: str, lease_seconds: float = 60.0) -> SqlBackend | WandbBackend:
    """Open the backend a URL names.

    `sqlite:///PATH` or `postgresql://...`: the SQL backend. `wandb` (server from
    WANDB_BASE_URL, default https://api.wandb.ai) or `wandb+https://HOST[:PORT]`: W&B's
    queues, where W&B's own lease applies (`lease_seconds` is not used).
    """
    if is_sql_url(url):
        from agent_lib.backends.sql import SqlBackend

        return SqlBackend(sqlalchemy_url(url), lease_seconds)
    if is_wandb_url(url):
        from agent_lib.backends.wandb import WandbBackend

        return WandbBackend.from_url(url)
    raise ValueError(
        f"unsupported backend URL {display_url(url)!r}: use sqlite:///PATH, postgresql://..., "
        "wandb or wandb+https://HOST"
    )


__getattr__ = lazy_exports(__name__, _LAZY)
