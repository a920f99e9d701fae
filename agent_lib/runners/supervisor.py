"""Keeps one local-process job going after the agent that started it is gone.

Run as `python -I -S supervisor.py --job-dir D --launch-id L --cwd C --log F -- argv...`,
in its own session, with the job's environment as its own. Standard library only, and no
`agent_lib` import: it must start fast and must not depend on the agent's packages.

It claims the job exactly once (`os.link` of its record to `supervisor/claim.json`), starts
it, tells the agent one line on stdout (then closes it, so the agent's death cannot hurt
it), waits for the job and records its end in `supervisor/exit.json`. A restarted agent
reads these files to find the job again; see `local_process.py` for the reader side.

Files in `<job-dir>/supervisor/` (all JSON, each written whole: temp file + link/replace):
  claim.json  launch_id, supervisor_pid, supervisor_start_ticks, started_at
  child.json  pid (= its process group), start_ticks, started_at
  exit.json   ended_at, and either exit_code (negative: killed by that signal) and
              terminated (SIGTERM reached the supervisor), or error (the job never started)
  cancel      present once a cancel was asked; its stragglers are killed at its end
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import BinaryIO

FOLDER = "supervisor"
CLAIM = "claim.json"
CHILD = "child.json"
EXIT = "exit.json"
CANCEL = "cancel"
LOG = "supervisor.log"

STDERR_MARKER = b"[stderr] "
# How long the end waits for the job's last stderr lines (a child it left behind may hold
# the pipe open for longer: its lines still reach the log, after the end is recorded).
STDERR_DRAIN_SECONDS = 2.0

CLAIMED_BY_OTHER_EXIT = 3  # another supervisor holds the job: nothing was started
USAGE_EXIT = 2

_PR_SET_PDEATHSIG = 1


def proc_stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and start time (clock ticks since boot; tells reused pids
    apart), from /proc/<pid>/stat; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # the name may hold spaces and ')'
    return fields[0].decode(), int(fields[19])  # fields 3 (state) and 22 (starttime)


def start_ticks(pid: int) -> int | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[1]


def write_json(path: str, record: dict[str, object], sync: bool = False) -> None:
    """Write `record` whole: readers see the old file or the new one, never half of it."""
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temp, path)


class Supervisor:
    """One job's claim, start, wait and record."""

    def __init__(self, job_dir: str, launch_id: str, cwd: str, log: str, argv: list[str]) -> None:
        self.folder = os.path.join(job_dir, FOLDER)
        self.launch_id = launch_id
        self.cwd = cwd
        self.log = log
        self.argv = argv
        self.child: subprocess.Popen[bytes] | None = None
        self.stderr_copier: threading.Thread | None = None
        self.terminated = False

    def main(self) -> int:
        for signum in (signal.SIGINT, signal.SIGHUP):
            # A handler, not SIG_IGN: an ignored signal would stay ignored in the job.
            signal.signal(signum, _ignore)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        if not self._claim():
            _handshake("claimed-by-other")
            return CLAIMED_BY_OTHER_EXIT
        if self.terminated:  # asked to stop before anything started
            self._record({"exit_code": -signal.SIGTERM, "terminated": True})
            _handshake(f"error {json.dumps('the job was stopped before it started')}")
            return 0
        error = self._start()
        if error is not None:
            self._record({"error": error})
            _handshake(f"error {json.dumps(error)}")
            return 0
        assert self.child is not None
        _handshake(f"started {self.child.pid}")
        code = self._wait()
        if self.stderr_copier is not None:  # the tail must be whole when the end is recorded
            self.stderr_copier.join(STDERR_DRAIN_SECONDS)
        self._record({"exit_code": code, "terminated": self.terminated})
        return 0

    def _claim(self) -> bool:
        """Link our record to claim.json: only the first supervisor of a job succeeds."""
        os.makedirs(self.folder, exist_ok=True)
        me = os.getpid()
        record = {
            "launch_id": self.launch_id,
            "supervisor_pid": me,
            "supervisor_start_ticks": start_ticks(me),
            "started_at": time.time(),
        }
        temp = os.path.join(self.folder, f"claim.{me}.tmp")
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, os.path.join(self.folder, CLAIM))
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)
        return True

    def _start(self) -> str | None:
        """Start the job in its own process group; the reason it could not start, if so."""
        parent = os.getpid()
        libc = ctypes.CDLL(None, use_errno=True)

        def die_with_supervisor() -> None:
            # SIGKILL to the job if its supervisor dies (even by SIGKILL): no orphan job.
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the supervisor died before prctl took effect
                os._exit(1)

        try:
            with open(self.log, "ab") as out:
                self.child = subprocess.Popen(
                    self.argv,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.PIPE,
                    process_group=0,
                    preexec_fn=die_with_supervisor,
                )
        except FileNotFoundError as exc:
            if exc.filename == self.cwd:
                return f"working directory does not exist: {self.cwd}"
            return f"command not found: {self.argv[0]!r}"
        except PermissionError as exc:
            if exc.filename == self.cwd:
                return f"working directory is not accessible: {self.cwd}"
            return f"command not executable: {self.argv[0]!r}"
        except NotADirectoryError:
            return f"working directory does not exist: {self.cwd}"
        except OSError as exc:
            return f"could not start {self.argv[0]!r}: {exc}"
        pid = self.child.pid
        assert self.child.stderr is not None
        self.stderr_copier = threading.Thread(
            target=_copy_marked, args=(self.child.stderr, self.log), daemon=True
        )
        self.stderr_copier.start()
        write_json(
            os.path.join(self.folder, CHILD),
            {"pid": pid, "start_ticks": start_ticks(pid), "started_at": time.time()},
        )
        if self.terminated:  # SIGTERM came while the job was being started
            _killpg(pid, signal.SIGTERM)
        return None

    def _wait(self) -> int:
        """The job's exit code; a cancelled job's stragglers are killed before it is reaped."""
        assert self.child is not None
        pid = self.child.pid
        while True:
            try:
                # WNOWAIT: the job stays a zombie, so its pid (= its group) cannot be reused yet.
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
        if self.terminated or os.path.exists(os.path.join(self.folder, CANCEL)):
            _killpg(pid, signal.SIGKILL)
        return self.child.wait()

    def _record(self, fields: dict[str, object]) -> None:
        write_json(os.path.join(self.folder, EXIT), {**fields, "ended_at": time.time()}, True)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        """A stray SIGTERM to the supervisor ends the job cleanly, and its end is recorded."""
        self.terminated = True
        if self.child is not None and self.child.returncode is None:
            _killpg(self.child.pid, signal.SIGTERM)


def _copy_marked(stream: BinaryIO, log: str) -> None:
    """Copy the job's stderr into its log, each line marked, one write a line (O_APPEND),
    so a person (and the Prefect logs) can tell it from stdout."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for line in iter(stream.readline, b""):
            os.write(fd, STDERR_MARKER + (line if line.endswith(b"\n") else line + b"\n"))
    finally:
        os.close(fd)
        stream.close()


def _ignore(signum: int, frame: object) -> None:
    """SIGINT/SIGHUP (the agent's terminal) are not the job's end."""


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _handshake(line: str) -> None:
    """Tell the agent one line, then close stdout: a dead agent must not break us later."""
    with contextlib.suppress(OSError):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        sys.stdout.close()
    with contextlib.suppress(OSError):
        os.close(1)


def parse(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """`--name value` options up to `--`, then the job's argv (argparse costs start time)."""
    options: dict[str, str] = {}
    index = 0
    while index < len(args) and args[index] != "--":
        name = args[index]
        if not name.startswith("--") or index + 1 >= len(args):
            raise ValueError(f"bad argument: {name!r}")
        options[name[2:].replace("-", "_")] = args[index + 1]
        index += 2
    argv = args[index + 1 :]
    missing = {"job_dir", "launch_id", "cwd", "log"} - options.keys()
    if missing or not argv:
        raise ValueError(f"missing: {sorted(missing) or 'the command after --'}")
    return options, argv


def main(args: list[str]) -> int:
    try:
        options, argv = parse(args)
    except ValueError as exc:
        usage = "usage: supervisor.py --job-dir D --launch-id L --cwd C --log F -- argv..."
        print(f"{usage}\n{exc}", file=sys.stderr)
        return USAGE_EXIT
    return Supervisor(
        options["job_dir"], options["launch_id"], options["cwd"], options["log"], argv
    ).main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
