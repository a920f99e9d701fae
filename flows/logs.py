"""Logs a person sees in the Prefect UI: the agent's own, and each job's output.

agent_lib logs through `logging` under "agent_lib"; attaching Prefect's API handler to
that logger (what PREFECT_LOGGING_EXTRA_LOGGERS=agent_lib does at start-up) sends each
record to the flow or task run it was emitted in. A job's output file is tailed into
its subflow run's logs while it runs, up to a cap so one chatty job cannot flood the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

AGENT_LOGGER = "agent_lib"
MAX_STREAMED_LINES = 1000
TAIL_LINES_AFTER_CAP = 20
POLL_SECONDS = 1.0


class RunLogHandler(APILogHandler):
    """Prefect's API handler, for records emitted inside a flow or task run only.

    The same process may log through agent_lib outside any run (a CLI call, a test's own
    backend); those records stay local instead of raising Prefect's "no flow run id" warning.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        super().emit(record)


def route_agent_logs() -> None:
    """Give the "agent_lib" logger Prefect's console and API handlers (once), at INFO."""
    target = logging.getLogger(AGENT_LOGGER)
    for handler in logging.getLogger("prefect.extra").handlers:
        if isinstance(handler, APILogHandler):
            continue
        if handler not in target.handlers:
            target.addHandler(handler)
    if not any(isinstance(h, APILogHandler) for h in target.handlers):
        target.addHandler(RunLogHandler())
    if target.level == logging.NOTSET or target.level > logging.INFO:
        target.setLevel(logging.INFO)


class OutputStreamer:
    """Follows a job's output file and logs its new lines through `logger`."""

    def __init__(self, path_of: Callable[[], Path], logger: Any) -> None:
        self._path_of = path_of
        self._logger = logger
        self._offset = 0
        self._partial = b""
        self._sent = 0
        self._capped = False

    def pump(self) -> None:
        """Log whatever the job wrote since the last call."""
        path = self._path_of()
        try:
            with path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            self._emit(line)

    def finish(self) -> None:
        """Flush the last line; if the cap cut the stream, log the tail instead."""
        self.pump()
        if self._partial:
            self._emit(self._partial)
            self._partial = b""
        if self._capped:
            self._log_tail()

    def _emit(self, line: bytes) -> None:
        if self._sent >= MAX_STREAMED_LINES:
            if not self._capped:
                self._capped = True
                self._logger.info(
                    "| ... output beyond %d lines is not streamed; full log: %s",
                    MAX_STREAMED_LINES,
                    self._path_of(),
                )
            return
        self._sent += 1
        self._logger.info("| %s", line.decode("utf-8", "replace").rstrip("\r"))

    def _log_tail(self) -> None:
        try:
            lines = self._path_of().read_bytes().splitlines()[-TAIL_LINES_AFTER_CAP:]
        except OSError:
            return
        self._logger.info("| ... last %d lines:", len(lines))
        for line in lines:
            self._logger.info("| %s", line.decode("utf-8", "replace"))


@contextlib.asynccontextmanager
async def streaming_output(path_of: Callable[[], Path], logger: Any) -> AsyncIterator[None]:
    """Stream a job's output into `logger` while the block runs, then flush it."""
    streamer = OutputStreamer(path_of, logger)

    async def follow() -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            streamer.pump()

    follower = asyncio.create_task(follow())
    try:
        yield
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        streamer.finish()
