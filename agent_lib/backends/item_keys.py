"""Item ids as the SQL backend's keys: whole numbers a BIGINT holds.

Its own module, free of SQLAlchemy: the CLI checks ids (and LIMITs) before it opens a
database, and must not pay for the database's imports to say that `abc` is no item.
"""

from __future__ import annotations

MAX_ITEM_ID = 2**63 - 1  # the largest id a BIGINT (and SQLite's INTEGER) holds


def item_key(item_id: str) -> int | None:
    """An item id as the database's key; None for anything that cannot be one."""
    try:
        key = int(item_id)
    except (TypeError, ValueError):
        return None
    return key if 0 < key <= MAX_ITEM_ID else None
