"""PostgreSQL LISTEN/NOTIFY: an idle agent wakes the moment an item may be waiting.

Writers call `notify_items(conn, queue)` inside their transaction; PostgreSQL delivers
the notification on commit (never for a rolled-back push). Each agent holds one extra
connection, outside the pool, that LISTENs; `PgListener.wait` blocks on it.

A notification is a hint, not a hand-off: the agent still pops with SKIP LOCKED, so a
lost or duplicated notification costs at most one poll interval or one empty pop. After
(re)connecting the listener answers True once, since items may have come while it was
not listening.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select
from sqlalchemy.engine import URL

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

CHANNEL = "launch_agent_items"


def notify_items(conn: Connection, queue: str) -> None:
    """Tell listening agents that `queue` may have an item (sent when `conn` commits)."""
    conn.execute(select(func.pg_notify(CHANNEL, queue)))


def libpq_conninfo(url: URL) -> str:
    """The SQLAlchemy URL as a libpq URI (empty parts come from PG* variables)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class PgListener:
    """One LISTEN connection, used from one watcher thread; reconnects when it breaks."""

    def __init__(self, conninfo: str, display_url: str) -> None:
        self._conninfo = conninfo
        self._display_url = display_url
        self._conn: psycopg.Connection[Any] | None = None
        self._busy = threading.Lock()
        self._closed = False

    def wait(self, queues: list[str], timeout: float) -> bool:
        """Block until a notification for one of `queues` (True) or `timeout` (False)."""
        import psycopg  # here: SQLite-only users never pay for the driver's import

        with self._busy:
            if self._closed:
                return False
            if self._conn is None or self._conn.closed:
                self._connect()
                return True
            try:
                for note in self._conn.notifies(timeout=timeout):
                    if not note.payload or note.payload in queues:
                        return True
            except psycopg.Error:
                self._drop()
                raise
            return False

    def _connect(self) -> None:
        import psycopg

        self._conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
        self._conn.execute(f"LISTEN {CHANNEL}")
        log.debug("listening for new items on %s", self._display_url)

    def _drop(self) -> None:
        import psycopg

        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        """Close the connection (waiting briefly for a `wait` in progress to return)."""
        self._closed = True
        if self._busy.acquire(timeout=3.0):
            try:
                self._drop()
            finally:
                self._busy.release()
