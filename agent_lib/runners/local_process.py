"""Runs a job as a local process: argv (never a shell), its own process group and folder."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from agent_lib.errors import LaunchError, SpecError
from agent_lib.runners.base import LaunchContext, Status, SubmittedRun, read_log_tail
from agent_lib.spec import LOCAL_PROCESS
from agent_lib.states import RunState

# The agent's own settings are not the job's business.
_AGENT_ENV_PREFIXES = ("LAUNCH_AGENT_",)


class LocalProcessRunner:
    """Starts `context.command` as a child process with the job's environment."""

    resource = LOCAL_PROCESS

    async def run(self, context: LaunchContext) -> LocalSubmittedRun:
        if not context.command:
            raise SpecError(
                "nothing to run: a local-process job needs overrides.entry_point "
                "or a named job with an entry_point"
            )
        context.work_dir.mkdir(parents=True, exist_ok=True)
        cwd = Path(context.resource_args.get("cwd") or context.work_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith(_AGENT_ENV_PREFIXES)}
        env.update({str(k): str(v) for k, v in context.resource_args.get("env", {}).items()})
        env.update(context.env)
        with context.log_path.open("ab") as log:
            try:
                process = await asyncio.create_subprocess_exec(
                    *context.command,
                    cwd=cwd,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own process group, so cancel reaches children
                )
            except FileNotFoundError as exc:
                raise LaunchError(f"command not found: {context.command[0]!r}") from exc
            except PermissionError as exc:
                raise LaunchError(f"command not executable: {context.command[0]!r}") from exc
            except NotADirectoryError as exc:
                raise LaunchError(f"working directory does not exist: {cwd}") from exc
        return LocalSubmittedRun(process, context.log_path)


class LocalSubmittedRun(SubmittedRun):
    """A handle on a child process; its exit is awaited, not polled."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self._process = process
        self._log_path = log_path
        self._cancelled = False

    @property
    def id(self) -> str:
        return str(self._process.pid)

    @property
    def pid(self) -> int:
        return self._process.pid

    async def get_status(self) -> Status:
        code = self._process.returncode
        if code is None:
            state = RunState.STOPPING if self._cancelled else RunState.RUNNING
            return Status(state)
        return _final_status(code, self._cancelled)

    async def wait(self) -> Status:
        code = await self._process.wait()
        return _final_status(code, self._cancelled)

    async def cancel(self, grace: float = 10.0) -> None:
        if self._process.returncode is not None:
            return
        self._cancelled = True
        self._signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._process.wait(), timeout=grace)
        except TimeoutError:
            self._signal_group(signal.SIGKILL)
            await self._process.wait()

    def _signal_group(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)

    async def get_logs(self, tail: int | None = None) -> str:
        return read_log_tail(self._log_path, tail)


def _final_status(code: int, cancelled: bool) -> Status:
    if cancelled:
        return Status(RunState.STOPPED, exit_code=code, reason="cancelled")
    if code == 0:
        return Status(RunState.FINISHED, exit_code=0)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else "?"
        return Status(RunState.FAILED, exit_code=code, reason=f"killed by signal {name}")
    return Status(RunState.FAILED, exit_code=code)
