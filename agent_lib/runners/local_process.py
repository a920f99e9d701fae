"""Runs a job as a local process: argv (never a shell), its own process group and folder.

The job is started by a small supervisor (`supervisor.py`) in its own session, not by the
agent, so it outlives the agent. The supervisor records the job's claim, its pid and its end
in `<job_dir>/supervisor/`; `find` reads them back, so a restarted agent re-attaches to a
running job (or gets the end of one that ended while it was away) and never starts it twice.

The supervisor is normally a fork of the agent's fork server (`forkserver.py`: ~1 ms instead
of a new interpreter's ~25 ms); it is the same supervisor either way. When the fork server
is gone, broken or refuses a request, the runner starts the supervisor directly
(`python -I -S supervisor.py`), as it always could; `LAUNCH_AGENT_FORK_SERVER=0` in the
agent's environment always does (for comparison and as a way out).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import sys
import uuid
import weakref
from pathlib import Path
from typing import Any

from agent_lib.errors import LaunchError, SpecError
from agent_lib.runners import forkserver, supervisor
from agent_lib.runners.base import (
    PREEMPTING_SIGNALS,
    LaunchContext,
    Status,
    SubmittedRun,
    key_value_pairs,
    read_log_tail,
    signal_status,
)
from agent_lib.spec import LOCAL_PROCESS
from agent_lib.states import RunState

# The agent's own settings are not the job's business.

SUPERVISOR_SCRIPT = Path(supervisor.__file__).resolve()
SUPERVISOR_DIED = "its supervisor died before recording the job's end"

# How long `find` waits for a just-started supervisor to record its job (it takes ms).
_STARTUP_WAIT = 10.0
_STARTUP_STEP = 0.01

FORK_SERVER_SWITCH = "LAUNCH_AGENT_FORK_SERVER"

# One fork server per event loop (its socket is awaited on that loop); dropped with the loop.
_FORK_SERVERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, forkserver.ForkServerClient]
_FORK_SERVERS = weakref.WeakKeyDictionary()


def fork_server() -> forkserver.ForkServerClient | None:
    """This event loop's fork server client; None if it is switched off or gave up."""
    if os.environ.get(FORK_SERVER_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    loop = asyncio.get_running_loop()
    client = _FORK_SERVERS.get(loop)
    if client is None or client.owner != os.getpid():  # a new loop, or a forked agent
        for other, old in list(_FORK_SERVERS.items()):
            if other.is_closed():
                old.close()
                del _FORK_SERVERS[other]
        client = _FORK_SERVERS[loop] = forkserver.ForkServerClient()
    return client if client.usable else None  # after repeated failures: direct spawn


class LocalProcessRunner:
    """Starts `context.command` under a supervisor, with the job's environment."""

    resource = LOCAL_PROCESS

    async def run(self, context: LaunchContext) -> LocalSubmittedRun:
        """Start the job, or hand back the one started before for this job folder."""
        if not context.command:
            raise SpecError(
                "nothing to run: a local-process job needs overrides.entry_point "
                "or a named job with an entry_point"
            )
        found = await self.find(context)
        if found is not None:
            return found.started()
        context.work_dir.mkdir(parents=True, exist_ok=True)
        context.log_path.parent.mkdir(parents=True, exist_ok=True)
        folder = context.job_dir / supervisor.FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        cwd = Path(os.path.abspath(context.resource_args.get("cwd") or context.work_dir))
        env = dict(context.host_env)
        try:
            env.update(key_value_pairs(context.resource_args.get("env")))
        except ValueError as exc:
            raise SpecError(f"resource_args.local-process.env: {exc}") from None
        env.update(context.env)
        launch_id = uuid.uuid4().hex
        job_dir = os.path.abspath(context.job_dir)
        log = os.path.abspath(context.log_path)
        client = fork_server()
        if client is not None:
            request = {
                "job_dir": job_dir,
                "launch_id": launch_id,
                "cwd": str(cwd),
                "log": log,
                "argv": list(context.command),
                "env": env,
            }
            forked = await self._run_forked(context, folder, client, request)
            if forked is not None:
                return forked
        return await self._run_direct(context, folder, job_dir, launch_id, cwd, log, env)

    async def _run_forked(
        self,
        context: LaunchContext,
        folder: Path,
        client: forkserver.ForkServerClient,
        request: dict[str, Any],
    ) -> LocalSubmittedRun | None:
        """Start the supervisor as a fork of the fork server; None if no supervisor was
        started that way (and none holds the job): the caller then starts one directly."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        spawned: forkserver.Spawned | None = None
        try:
            try:
                spawned = await client.spawn(request, write_end)
            finally:
                os.close(write_end)  # the supervisor holds the last write end
            # A line if a supervisor runs; EOF if none does (or it died before its handshake).
            line = await forkserver.read_handshake(read_end)
        except BaseException:  # cancelled: the job (if any) goes on, found later by its claim
            if spawned is not None:
                spawned.close()
            raise
        finally:
            os.close(read_end)
        kind, _, rest = line.partition(" ")
        if kind == "started":
            claim = _read_json(folder / supervisor.CLAIM) or {}
            if spawned is not None and spawned.pidfd is not None:
                return LocalSubmittedRun(folder, context.log_path, claim, pidfd=spawned.pidfd)
            # The server's reply was lost: follow the supervisor by its claim, as after a restart.
            found = await self.find(context)
            if found is not None:
                return found.started()
            raise LaunchError(f"the job's supervisor started but left no claim in {folder}")
        if spawned is not None:
            spawned.close()
        if kind == "error":
            raise LaunchError(str(json.loads(rest)))
        found = await self.find(context)  # claimed by another supervisor, or by one that died
        if found is not None:
            return found.started()
        if kind == "claimed-by-other":
            raise LaunchError(f"the job's supervisor found a claim that vanished in {folder}")
        if spawned is not None:  # a fork that died before it claimed the job: not to be trusted
            client.failed()
        return None  # no supervisor holds the job: start one directly

    async def _run_direct(
        self,
        context: LaunchContext,
        folder: Path,
        job_dir: str,
        launch_id: str,
        cwd: Path,
        log: str,
        env: dict[str, str],
    ) -> LocalSubmittedRun:
        """Start the supervisor as a new interpreter (the fork server's fallback)."""
        with (folder / supervisor.LOG).open("ab") as errors:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",  # the job's PYTHON* variables are not the supervisor's
                "-S",  # no site-packages scan: it starts in a few ms
                str(SUPERVISOR_SCRIPT),
                "--job-dir",
                job_dir,
                "--launch-id",
                launch_id,
                "--cwd",
                str(cwd),
                "--log",
                log,
                "--",
                *context.command,
                cwd=context.job_dir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
                start_new_session=True,  # not in the agent's group: its signals are not ours
            )
        assert process.stdout is not None
        # If this is cancelled mid-handshake, the job goes on; a later run()/find() finds it.
        line = (await process.stdout.readline()).decode("utf-8", errors="replace").strip()
        kind, _, rest = line.partition(" ")
        if kind == "started":
            claim = _read_json(folder / supervisor.CLAIM) or {}
            return LocalSubmittedRun(folder, context.log_path, claim, process=process)
        code = await process.wait()
        if kind == "error":
            raise LaunchError(str(json.loads(rest)))
        if kind == "claimed-by-other":
            found = await self.find(context)
            if found is not None:
                return found.started()
        errors_tail = read_log_tail(folder / supervisor.LOG, 5).strip()
        raise LaunchError(
            f"the job's supervisor failed (exit code {code}): {errors_tail or line or 'no output'}"
        )

    async def find(self, context: LaunchContext) -> LocalSubmittedRun | None:
        """The job started earlier in this job folder (running or ended); starts nothing."""
        folder = context.job_dir / supervisor.FOLDER
        claim = _read_json(folder / supervisor.CLAIM)
        if claim is None:
            return None
        record = _read_json(folder / supervisor.EXIT)
        if record is not None:
            return LocalSubmittedRun(folder, context.log_path, claim, record=record)
        pidfd = _open_if_alive(int(claim["supervisor_pid"]), claim.get("supervisor_start_ticks"))
        if pidfd is None:
            return LocalSubmittedRun(folder, context.log_path, claim, record=_conclude(folder))
        # Claimed a moment ago: give it the few ms it takes to start (or fail to start) the job.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STARTUP_WAIT
        while not (
            (folder / supervisor.CHILD).exists()
            or (folder / supervisor.EXIT).exists()
            or _pidfd_exited(pidfd)
            or loop.time() > deadline
        ):
            await asyncio.sleep(_STARTUP_STEP)
        return LocalSubmittedRun(folder, context.log_path, claim, pidfd=pidfd)


class LocalSubmittedRun(SubmittedRun):
    """A handle on a supervised job: its end is awaited (process exit, pidfd), never polled.

    Made three ways: by `run` (the supervisor is our child: its exit is awaited as such), by
    `find` on a live supervisor (its pidfd is watched by the event loop), or by `find` on a
    job that already ended (its recorded end is returned at once).
    """

    def __init__(
        self,
        folder: Path,
        log_path: Path,
        claim: dict[str, Any],
        *,
        process: asyncio.subprocess.Process | None = None,
        pidfd: int | None = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        self._folder = folder
        self._log_path = log_path
        self._claim = claim
        self._process = process
        self._pidfd = pidfd
        self._pidfd_exit: asyncio.Future[None] | None = None
        self._record = record
        self._cancelled = False

    @property
    def id(self) -> str:
        return str(self.supervisor_pid)

    @property
    def supervisor_pid(self) -> int:
        if self._process is not None:
            return self._process.pid
        return int(self._claim["supervisor_pid"])

    @property
    def pid(self) -> int:
        """The job's pid (= its process group); LookupError if it never started."""
        child = self._child()
        if child is None:
            raise LookupError("the job has not started")
        return int(child["pid"])

    @property
    def launch_error(self) -> str | None:
        """Why the job could not be started, if it could not."""
        if self._record is None:
            return None
        error = self._record.get("error")
        return None if error is None else str(error)

    def started(self) -> LocalSubmittedRun:
        """This run, or the LaunchError its job got when it could not be started."""
        error = self.launch_error
        if error is not None:
            raise LaunchError(error)
        return self

    async def get_status(self) -> Status:
        if self._record is None and self._supervisor_exited():
            self._finish()
        if self._record is not None:
            return self._status(self._record)
        return Status(RunState.STOPPING if self._cancelled else RunState.RUNNING)

    async def wait(self) -> Status:
        """The job's end; a job that could not be started raises its LaunchError, as
        `run` did when it first tried (a re-attached run reports it the same way)."""
        await self._supervisor_gone()
        record = self._finish()
        self.started()
        return self._status(record)

    async def cancel(self, grace: float = 10.0) -> None:
        """SIGTERM to the job's group, SIGKILL after `grace`; returns once its end is recorded."""
        if self._record is not None or self._supervisor_exited():
            return
        self._cancelled = True
        # On disk too: the end of a job cancelled by an agent that then died reads "cancelled".
        with contextlib.suppress(OSError):
            (self._folder / supervisor.CANCEL).touch()
        self._signal_job(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._supervisor_gone(), timeout=grace)
            return
        except TimeoutError:
            self._signal_job(signal.SIGKILL)
        try:
            await asyncio.wait_for(self._supervisor_gone(), timeout=max(grace, 1.0))
        except TimeoutError:  # a stuck supervisor: SIGKILL it, the job dies with it
            self._signal_supervisor(signal.SIGKILL)
            await self._supervisor_gone()

    async def get_logs(self, tail: int | None = None) -> str:
        return read_log_tail(self._log_path, tail)

    async def cleanup(self) -> None:
        """Nothing to release: the pidfd goes with the end, the records stay with the job."""

    # -- the supervisor's end -------------------------------------------------------------

    async def _supervisor_gone(self) -> None:
        """Return once the supervisor has exited (awaited, not polled)."""
        if self._record is not None:
            return
        if self._process is not None:
            await self._process.wait()  # also reaps it: no zombie
        elif self._pidfd is not None:
            await asyncio.shield(self._pidfd_future())

    def _pidfd_future(self) -> asyncio.Future[None]:
        if self._pidfd_exit is None:
            assert self._pidfd is not None
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            fd = self._pidfd

            def readable() -> None:  # a pidfd turns readable when its process exits
                loop.remove_reader(fd)
                if not future.done():
                    future.set_result(None)

            loop.add_reader(fd, readable)
            self._pidfd_exit = future
        return self._pidfd_exit

    def _supervisor_exited(self) -> bool:
        if self._process is not None:
            return self._process.returncode is not None
        if self._pidfd is not None:
            return _pidfd_exited(self._pidfd)
        return True

    def _finish(self) -> dict[str, Any]:
        """Read the recorded end once the supervisor is gone (or note that it died)."""
        if self._record is None:
            self._record = _conclude(self._folder)
            self._close_pidfd()
        return self._record

    def _close_pidfd(self) -> None:
        """Once the supervisor is gone: release the pidfd and wake whoever awaits it."""
        if self._pidfd is None:
            return
        if self._pidfd_exit is not None and not self._pidfd_exit.done():
            # get_status saw the exit before the loop ran our reader: end the wait, not cancel it.
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            self._pidfd_exit.set_result(None)
        os.close(self._pidfd)
        self._pidfd = None

    def _status(self, record: dict[str, Any]) -> Status:
        cancelled = self._cancelled or (self._folder / supervisor.CANCEL).exists()
        if record.get("error") is not None:
            return Status(RunState.FAILED, reason=str(record["error"]))
        if record.get("exit_code") is not None:
            return _final_status(int(record["exit_code"]), cancelled)
        if cancelled:
            return Status(RunState.STOPPED, reason="cancelled")
        return Status(RunState.FAILED, reason=str(record.get("reason") or SUPERVISOR_DIED))

    # -- signals ----------------------------------------------------------------------------

    def _child(self) -> dict[str, Any] | None:
        return _read_json(self._folder / supervisor.CHILD)

    def _signal_job(self, signum: signal.Signals) -> None:
        """Signal the job's process group; before it exists, its supervisor instead."""
        child = self._child()
        if child is None:
            # SIGTERM: it starts nothing (or forwards it); SIGKILL: the job dies with it.
            self._signal_supervisor(signum)
        elif not self._supervisor_exited():  # it has not reaped the job: the group is ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(child["pid"]), signum)

    def _signal_supervisor(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._process is not None:
                if self._process.returncode is None:
                    self._process.send_signal(signum)
            elif self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)


def _final_status(code: int, cancelled: bool) -> Status:
    if cancelled:
        return Status(RunState.STOPPED, exit_code=code, reason="cancelled")
    if code == 0:
        return Status(RunState.FINISHED, exit_code=0)
    if code < 0:
        # SIGKILL stays a failure: it is also how the kernel's OOM killer ends a process.
        return signal_status(-code, code, PREEMPTING_SIGNALS)
    return Status(RunState.FAILED, exit_code=code)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A record the supervisor wrote whole (link/replace), or None if it is not there."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise LaunchError(f"unreadable supervisor record: {path}")
    return data


def _alive(pid: int, ticks: Any) -> bool:
    """Whether `pid` is still the process that started at `ticks` (a zombie is dead)."""
    stat = supervisor.proc_stat(pid)
    return stat is not None and stat[0] not in "ZXx" and ticks is not None and stat[1] == ticks


def _open_if_alive(pid: int, ticks: Any) -> int | None:
    """A pidfd on the recorded process if it still runs; None if it ended (or pid reused)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # Checked after opening: if it is still the same process now, the pidfd is on it.
    if not _alive(pid, ticks):
        os.close(pidfd)
        return None
    return pidfd


def _pidfd_exited(pidfd: int) -> bool:
    readable, _, _ = select.select([pidfd], [], [], 0)
    return bool(readable)


def _conclude(folder: Path) -> dict[str, Any]:
    """The job's recorded end; if its supervisor died without one, make sure the job is gone."""
    record = _read_json(folder / supervisor.EXIT)
    if record is not None:
        return record
    child = _read_json(folder / supervisor.CHILD)
    if child is not None:
        _kill_orphaned_group(int(child["pid"]), child.get("start_ticks"))
    return {"reason": SUPERVISOR_DIED}


def _kill_orphaned_group(pgid: int, ticks: Any) -> None:
    """Kill what is left of a job whose supervisor died: its leader died with it (pdeathsig),
    but the rest of its process group did not.

    The group is killed if its leader is still the recorded process, or if the leader is
    gone but members remain: a pid number stays reserved while it names a live group, so
    those members are the job's (unless the group emptied and its number went to a new
    group whose leader also ended: not guarded against).
    """
    leader = supervisor.proc_stat(pgid)
    if leader is not None and leader[0] not in "ZXx":
        ours = leader[1] == ticks  # else the number is a new process's now
    else:
        ours = ticks is not None and _group_members(pgid, int(ticks))
    if ours:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _group_members(pgid: int, since: int) -> bool:
    """Whether a live process of group `pgid` started no earlier than `since` (its leader)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X") and int(fields[19]) >= since:
            return True
    return False
