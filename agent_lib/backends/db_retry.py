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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from agent_lib.errors import TransientError

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


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
