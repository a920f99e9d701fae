"""The runner seam: `Runner.run(context) -> SubmittedRun`, as in W&B's AbstractRunner.

A runner starts one job and hands back a handle; the agent only ever talks to the handle.
Handles notice a job's end the moment it happens (process exit, the engine's wait API),
never by a fixed sleep.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent_lib.spec import LaunchSpec
from agent_lib.states import RunState


@dataclass(frozen=True)
class Status:
    """A job's state, with its exit code and the runtime's reason when it has ended."""

    state: RunState
    exit_code: int | None = None
    reason: str | None = None


@dataclass
class LaunchContext:
    """Everything a runner needs to start one job. Secrets are only ever in `env`."""

    item_id: str
    queue: str
    run_id: str
    spec: LaunchSpec
    command: list[str]
    image: str | None
    env: dict[str, str]
    job_dir: Path
    log_path: Path
    resource_args: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # What a job on this host takes from the agent's environment (local processes only:
    # a container has its image's own PATH and HOME). `env` is laid over it.
    host_env: dict[str, str] = field(default_factory=dict)

    @property
    def work_dir(self) -> Path:
        return self.job_dir / "work"


class SubmittedRun(ABC):
    """A handle on one launched job (W&B's AbstractRun)."""

    @property
    @abstractmethod
    def id(self) -> str: ...

    @abstractmethod
    async def get_status(self) -> Status: ...

    @abstractmethod
    async def wait(self) -> Status:
        """Wait for the job to end; returns its final status. A job found again that had
        failed to start raises the LaunchError its start raised."""

    @abstractmethod
    async def cancel(self, grace: float = 10.0) -> None:
        """Ask the job to stop, then force it after `grace` seconds."""

    @abstractmethod
    async def get_logs(self, tail: int | None = None) -> str:
        """The job's output so far (its last `tail` lines if given)."""

    async def cleanup(self) -> None:
        """Release what the run keeps after its end (a container), once its item is settled.

        Called only after the backend recorded the item's outcome: until then, what the run
        left behind is how a restarted agent finds the job's true end. Nothing by default.
        """
        return None


class Runner(Protocol):
    """Starts jobs on one kind of resource (`local-process`, `local-container`...).

    A job is known by its context (item, run id, job folder, labels). Both calls are
    idempotent per job, which is what lets jobs outlive their agent: a restarted agent calls
    `run` again for an item it held, and gets the job that is already going (or that ended
    while it was away) instead of a second one.
    """

    resource: str

    async def run(self, context: LaunchContext) -> SubmittedRun:
        """Start the job, or return a handle on it if it was started before."""
        ...

    async def find(self, context: LaunchContext) -> SubmittedRun | None:
        """The job started earlier for this context (running or ended), never starting one."""
        ...


def tail_lines(text: str, lines: int | None) -> str:
    """The last `lines` lines of `text` (all of it when `lines` is None)."""
    if lines is None:
        return text
    parts = text.splitlines(keepends=True)
    return "".join(parts[-lines:])


def read_log_tail(path: Path, lines: int | None, max_bytes: int = 1 << 20) -> str:
    """The end of a log file, read from its end so a huge log costs little."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return tail_lines(data.decode("utf-8", errors="replace"), lines)


def key_value_pairs(value: Any) -> dict[str, str]:
    """A mapping, or a list of `K=V` strings (docker CLI style), as a str -> str dict.

    ValueError saying what is wrong otherwise (callers name the key)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, str] = {}
        for entry in value:
            name, sep, val = str(entry).partition("=")
            if not sep or not name:
                raise ValueError(f"entry {entry!r} must be KEY=VALUE")
            out[name] = val
        return out
    raise ValueError("expected a mapping or a list of KEY=VALUE strings")


# Signals that end a job from outside without it being at fault: a spot reclaim, a node
# drain, a host shutdown, someone's `kill`. The job is preempted and resumes elsewhere.
PREEMPTING_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def signal_status(signum: int, exit_code: int, preempting: frozenset[int]) -> Status:
    """The status of a job that a signal (not sent by the agent) ended."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum in preempting:
        return Status(RunState.PREEMPTED, exit_code, f"ended by {name} from outside the agent")
    return Status(RunState.FAILED, exit_code, f"killed by signal {name}")
