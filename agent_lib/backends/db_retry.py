"""Riding out a database that goes away (restart, failover, network cut).

Every public SqlBackend operation runs through `Reconnector.call`: when the database is
unreachable it retries the whole transaction with exponential backoff for up to
`window` seconds, says so once in the log, and says when the database is back. Only
connection-class errors are retried; a bad query fails at once.

The reconnector also knows how long the database has been reachable without a break
(`healthy_for`): an agent judges others lost only after it has itself been connected for
their whole timeout, so an outage never makes every agent look dead to the first one back.

A retried write whose commit was lost together with the connection is safe for every
operation but `push` (the item could be stored twice): ack, fail, complete, release and
heartbeat are idempotent, and a pop whose answer was lost leaves a lease that expires.

Some connection errors are not outages but a wrong URL, and waiting does not mend them: a
refused password, an unknown database or user, a host name that does not exist, a SQLite
file that cannot be opened. Those fail at once with `DatabaseAccessError`, which names the
URL (password hidden).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from agent_lib.errors import BackendError, TransientError

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


# Connection errors that say the URL (or the server's access rules) is wrong. libpq reports
# them without a SQLSTATE, so they are known by their text.
_PG_PERMANENT = (
    "authentication failed",  # password, ident, peer, gss...
    "no password supplied",
    "no pg_hba.conf entry",
    "does not exist",  # database "x" / role "x" does not exist
    "permission denied for database",
    "ssl was required",
    "does not support ssl",
    "invalid sslmode",
    "invalid port",
    "invalid integer value",
)
# A host name that does not resolve: permanent before the database was ever reached (a
# typo), an outage after (DNS briefly away). "Temporary failure" is always an outage.
_PG_UNKNOWN_HOST = ("failed to resolve host", "could not translate host name")
_SQLITE_PERMANENT = (
    "unable to open database file",
    "file is not a database",
    "readonly database",
)


class DatabaseAccessError(BackendError):
    """The queue database refuses us for good (credentials, name, path): no retry helps."""


def backoff(attempt: int, base: float = 0.2, cap: float = 5.0) -> float:
    """0.2 s, 0.4 s, 0.8 s ... capped: fast while a restart is quick, gentle after."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


class Reconnector:
    """Retries operations across outages; tracks how long the database has been healthy."""

    def __init__(self, display_url: str, dialect: str, window: float = 120.0) -> None:
        self.display_url = display_url
        self.dialect = dialect
        self.window = window
        self._lock = threading.Lock()
        self._healthy_since: float | None = time.monotonic()
        self._down_since: float | None = None
        self._ever_reached = False

    def is_permanent(self, exc: BaseException) -> bool:
        """Whether `exc` says the database can never be used as configured (see module doc)."""
        if not isinstance(exc, DBAPIError):
            return False
        text = _first_line(exc).lower()
        if self.dialect == "sqlite":
            return any(p in text for p in _SQLITE_PERMANENT)
        if "invalid connection option" in text:  # a ProgrammingError: an unknown ?key= in the URL
            return True
        if not isinstance(exc, OperationalError):
            return False
        if any(p in text for p in _PG_PERMANENT):
            return True
        unknown_host = any(p in text for p in _PG_UNKNOWN_HOST)
        return unknown_host and "temporary failure" not in text and not self._ever_reached

    def is_outage(self, exc: BaseException) -> bool:
        """Whether `exc` means "cannot reach the database" rather than "bad request"."""
        if not isinstance(exc, DBAPIError):
            return False
        if self.dialect == "sqlite":
            text = str(exc.orig).lower()
            return isinstance(exc, OperationalError) and ("locked" in text or "busy" in text)
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)

    def healthy_for(self) -> float:
        """Seconds the database has answered without a break (0 while it is down)."""
        since = self._healthy_since
        return 0.0 if since is None else time.monotonic() - since

    def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        attempt = 0
        started = time.monotonic()
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if self.is_permanent(exc):
                    raise DatabaseAccessError(
                        f"cannot use the queue database at {self.display_url}: "
                        f"{_first_line(exc)}{_hint(exc)}"
                    ) from exc
                if not self.is_outage(exc):
                    raise
                attempt += 1
                waited = time.monotonic() - started
                self._went_down(exc)
                if waited >= self.window:
                    raise TransientError(
                        f"the queue database at {self.display_url} has been unreachable for "
                        f"{waited:.0f}s ({_first_line(exc)}); check that it runs and that "
                        "this machine can reach it"
                    ) from exc
                time.sleep(min(backoff(attempt), max(0.0, self.window - waited)))
                continue
            self._came_back()
            return result

    def _went_down(self, exc: BaseException) -> None:
        with self._lock:
            self._healthy_since = None
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning(
            "queue database %s unreachable (%s); retrying with backoff for up to %.0fs",
            self.display_url,
            _first_line(exc),
            self.window,
        )

    def _came_back(self) -> None:
        self._ever_reached = True
        if self._down_since is None and self._healthy_since is not None:
            return
        with self._lock:
            down, self._down_since = self._down_since, None
            if self._healthy_since is None:
                self._healthy_since = time.monotonic()
        if down is not None:
            log.warning(
                "queue database %s reachable again after %.1fs",
                self.display_url,
                time.monotonic() - down,
            )


def _first_line(exc: BaseException) -> str:
    """The driver's message without the SQL and parameters SQLAlchemy appends."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def _hint(exc: BaseException) -> str:
    """What to check, for the permanent errors whose message does not say it already."""
    text = _first_line(exc).lower()
    if "authentication failed" in text or "no password supplied" in text:
        return " (check the user and password in the URL, or PGUSER / PGPASSWORD)"
    if "unable to open database file" in text:
        return " (check that the folder exists and is writable)"
    return ""
