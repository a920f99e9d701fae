"""Logs a person sees in the Prefect UI: the agent's own, and each job's output.

agent_lib logs through `logging` under "agent_lib"; attaching Prefect's API handler to
that logger (what PREFECT_LOGGING_EXTRA_LOGGERS=agent_lib does at start-up) sends each
record to the flow or task run it was emitted in. A job's output file is tailed into
its subflow run's logs while it runs, up to a cap so one chatty job cannot flood the API:
each line as `| <line>`. The local-process runner writes stdout and stderr to one file,
interleaved as written, so the two are not told apart here.

A step that fails because the *job* failed (a bad spec, a failed build, a lease lost before
the ack) is not an agent error: Prefect's record of it keeps its one line but loses the
agent's traceback, so the job's own ERROR line (phase, message, exit code) leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

from agent_lib.errors import LaunchError, LeaseLostError
from agent_lib.hooks import is_transient
from agent_lib.runners.base import read_log_tail

AGENT_LOGGER = "agent_lib"
TASK_RUN_LOGGER = "prefect.task_runs"
OUTPUT_NOTE = "stderr lines marked [stderr]"
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
    quiet_job_failures()


def is_job_failure(exc: BaseException | None) -> bool:
    """Whether a step's exception is the job's own failure, not the agent's (or Prefect's)."""
    if isinstance(exc, LeaseLostError):
        return True
    return isinstance(exc, LaunchError) and not is_transient(exc)


class JobFailureFilter(logging.Filter):
    """On Prefect's task-run logger: a step that failed with the job's own failure is
    logged at WARNING and without the traceback: Prefect's "Task run failed with exception"
    (which carries the exception) and the step's "Finished in state Failed(...)" (which
    names it, and is the only record when the step had retries left). Anything else passes
    as is: an agent error keeps its traceback and its ERROR level.
    """

    def __init__(self) -> None:
        super().__init__("launch-agent job failures")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            if is_job_failure(exc):
                record.exc_info = None
                record.exc_text = None
                _demote(record)
        elif _names_job_failure(str(record.msg)):
            _demote(record)
        return True


_FAILED_WITH = re.compile(r"^Finished in state Failed\(.*encountered an exception (\w+):")


def _names_job_failure(message: str) -> bool:
    found = _FAILED_WITH.match(message)
    return found is not None and found.group(1) in _job_failure_names()


def _job_failure_names() -> set[str]:
    names = {LeaseLostError.__name__}
    pending: list[type[BaseException]] = [LaunchError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names


def _demote(record: logging.LogRecord) -> None:
    if record.levelno > logging.WARNING:
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)


def quiet_job_failures() -> None:
    """Install `JobFailureFilter` on Prefect's task-run logger (once)."""
    target = logging.getLogger(TASK_RUN_LOGGER)
    if not any(isinstance(f, JobFailureFilter) for f in target.filters):
        target.addFilter(JobFailureFilter())


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
            lines = read_log_tail(self._path_of(), TAIL_LINES_AFTER_CAP).splitlines()
        except OSError:
            return
        self._logger.info("| ... last %d lines of the job's output (%s):", len(lines), OUTPUT_NOTE)
        for line in lines:
            self._logger.info("| %s", line.rstrip("\r"))


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
