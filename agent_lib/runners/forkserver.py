"""A fork server ("zygote") for job supervisors: a supervisor is a fork, not a new interpreter.

Starting `python -I -S supervisor.py` costs ~25 ms of wall time and ~20 ms of CPU per job,
most of it imports. The fork server is one such interpreter, started once per agent (per
event loop, lazily, by `local_process.py`) with the supervisor's modules imported; each job's
supervisor is a fork of it that runs the same `supervisor.Supervisor` code as a directly
started one, in the same state: its own session, the server's signal changes undone, stdin
from /dev/null, stdout the agent's handshake pipe, stderr `supervisor/supervisor.log`, the
job folder as its working directory and the job's environment as its own.

The server:
- runs in its own session with an empty environment of its own (the agent's settings and
  credentials are not its business); a job's environment reaches it only in a request on a
  socket private to the agent (never argv, never a log);
- dies with its agent: `PR_SET_PDEATHSIG` (SIGKILL), and EOF on its request socket;
- serves one request at a time: fork, open a pidfd on the child (it cannot be reaped before
  that: children are reaped only in the server's loop), reply with the pid and that pidfd;
- holds no job: a supervisor forgets its server at once (setsid; a fork clears pdeathsig),
  so the server's death (even SIGKILL) does not touch running jobs; the agent follows a
  supervisor through its pidfd, or after a restart through `find()`, as before.

Protocol (AF_UNIX SOCK_SEQPACKET socketpair, one message each way):
  request  JSON {seq, job_dir, launch_id, cwd, log, argv, env}, with one fd (SCM_RIGHTS):
           the write end of the agent's handshake pipe (the supervisor's stdout)
  reply    "ok SEQ PID" with the supervisor's pidfd, or "fail SEQ REASON" (nothing forked)

The agent side (`ForkServerClient`) treats every doubt the same way: a lost reply, a dead or
stuck server, a refused request. It reads the handshake pipe, whose last write end the
supervisor holds: a line means a supervisor runs (its claim in the job folder says which);
EOF without one means none is running, and the job folder's claim (`os.link`, at most one
per job) decides whether one ran. Only then does the runner start the job another way.

Server side: standard library only, like the supervisor. Run as
`python -I -S forkserver.py --fd N --parent PID`.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import select
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import asyncio
    import subprocess

# A request larger than this (or than the socket takes: EMSGSIZE) is started the direct way.
MAX_REQUEST = 1024 * 1024
_SOCKET_BUFFER = MAX_REQUEST
_REPLY_SIZE = 256
_PR_SET_PDEATHSIG = 1
SERVER_SCRIPT = os.path.abspath(__file__)
REQUEST_KEYS = ("seq", "job_dir", "launch_id", "cwd", "log", "argv", "env")


# -- the server ---------------------------------------------------------------------------------


def serve(sock: socket.socket, parent: int) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the agent died before prctl took effect
        return 0
    # Imported now, once: the forks have them for free (this is the server's whole point).
    _here = os.path.dirname(SERVER_SCRIPT)
    if _here not in sys.path:
        sys.path.insert(0, _here)
    importlib.import_module("supervisor")  # subprocess, json, ctypes, threading

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, _noop)  # reaped below, only here: a pidfd never races it
    sock.setblocking(True)
    while True:
        _reap()
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
        if sock.fileno() not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 1)
        except OSError:
            return 0
        if not data:  # EOF: the agent is gone
            return 0
        try:
            _handle(sock, data, fds, (wake_r, wake_w))
        except OSError:  # the agent is gone mid-reply
            return 0


def _handle(sock: socket.socket, data: bytes, fds: list[int], private: tuple[int, int]) -> None:
    seq = -1
    try:
        request = json.loads(data)
        seq = int(request["seq"])
        if len(fds) != 1 or not all(key in request for key in REQUEST_KEYS):
            raise ValueError("malformed request")
    except (ValueError, TypeError, KeyError) as exc:
        for fd in fds:
            os.close(fd)
        sock.send(f"fail {seq} {exc}".encode())
        return
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(fds[0])
        sock.send(f"fail {seq} fork: {exc}".encode())
        return
    if pid == 0:
        _child(request, fds[0], sock, private)
    os.close(fds[0])
    try:  # not reaped yet (only the loop reaps): it is this child, whatever it did meanwhile
        pidfd = os.pidfd_open(pid)
    except OSError:  # the agent then finds it by its claim
        sock.send(f"ok {seq} {pid}".encode())
        return
    try:
        socket.send_fds(sock, [f"ok {seq} {pid}".encode()], [pidfd])
    finally:
        os.close(pidfd)


def _child(
    request: dict[str, Any], handshake: int, sock: socket.socket, private: tuple[int, int]
) -> NoReturn:
    """Become the job's supervisor, in the state a directly started one begins in."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        for fd in private:
            os.close(fd)
        os.setsid()
        job_dir = str(request["job_dir"])
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(
            os.path.join(job_dir, "supervisor", "supervisor.log"),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT,
            0o644,
        )
        for fd, target in ((null, 0), (handshake, 1), (log, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(job_dir)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        supervisor = importlib.import_module("supervisor")
        code = supervisor.Supervisor(
            job_dir,
            str(request["launch_id"]),
            str(request["cwd"]),
            str(request["log"]),
            [str(arg) for arg in request["argv"]],
        ).main()
    except BaseException:  # everything goes to supervisor.log, then we exit
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _noop(signum: int, frame: object) -> None:
    """SIGCHLD only wakes the loop (through the wakeup fd)."""


def main(args: list[str]) -> int:
    try:
        options = dict(zip(args[::2], args[1::2], strict=True))
        fd, parent = int(options["--fd"]), int(options["--parent"])
    except (ValueError, KeyError):
        print("usage: forkserver.py --fd N --parent PID", file=sys.stderr)
        return 2
    return serve(socket.socket(fileno=fd), parent)


# -- the agent's side -----------------------------------------------------------------------------


class Spawned:
    """The server's answer: it forked a supervisor with this pid (and pidfd, ours to close)."""

    def __init__(self, pid: int, pidfd: int | None) -> None:
        self.pid = pid
        self.pidfd = pidfd

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class ForkServerClient:
    """One event loop's fork server: started on first use, replaced when it breaks.

    `spawn` never raises for the server's sake: it returns a `Spawned`, or None when the
    server did not (or may not have) forked; the caller then learns the truth from the
    handshake pipe and the job folder. After `MAX_FAILURES` broken servers in a row it stops
    trying (`usable` turns False) and the runner starts supervisors directly.
    """

    MAX_FAILURES = 3
    REPLY_TIMEOUT = 10.0

    def __init__(self) -> None:
        import asyncio

        self._owner = os.getpid()
        self._lock = asyncio.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._seq = 0
        self._failures = 0

    @property
    def owner(self) -> int:
        """The pid of the agent process this client (and its server) belongs to."""
        return self._owner

    @property
    def usable(self) -> bool:
        return self._failures < self.MAX_FAILURES and os.getpid() == self._owner

    @property
    def server_pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def spawn(self, request: dict[str, Any], handshake: int) -> Spawned | None:
        """Ask for a supervisor with `request` (without seq), its stdout `handshake`."""
        import asyncio

        if _unsendable(request):
            return None  # started directly, which reports it as it always did
        async with self._lock:
            sock = self._connected()
            if sock is None:
                return None
            self._seq += 1
            seq = self._seq
            data = json.dumps({**request, "seq": seq}).encode()
            if len(data) > MAX_REQUEST:
                return None
            try:
                socket.send_fds(sock, [data], [handshake])
            except (BlockingIOError, OSError) as exc:
                # Not sent (a dead server, or a request too big for the socket): no fork.
                if exc.errno != errno.EMSGSIZE:
                    self._broken()
                return None
            try:
                return await asyncio.wait_for(self._reply(sock, seq), self.REPLY_TIMEOUT)
            except (TimeoutError, OSError, ValueError):
                self._broken()  # maybe forked, maybe not: the handshake pipe will tell
                return None
            # Cancelled: the reply stays in the socket and the next `_reply` skips it by its
            # seq; the job (if forked) goes on, and a later run()/find() finds it by its claim.

    async def _reply(self, sock: socket.socket, seq: int) -> Spawned | None:
        import asyncio

        loop = asyncio.get_running_loop()
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, _REPLY_SIZE, 1)
            except BlockingIOError:
                await _readable(loop, sock.fileno())
                continue
            if not data:
                raise OSError("the fork server closed its socket")
            kind, got, rest = _parse_reply(data)
            if got != seq:  # the answer to a request whose caller gave up
                for fd in fds:
                    os.close(fd)
                continue
            if kind == "ok" and rest.isdigit():
                self._failures = 0
                return Spawned(int(rest), fds[0] if fds else None)
            for fd in fds:
                os.close(fd)
            if kind == "fail":
                return None
            raise ValueError(f"unexpected reply from the fork server: {data!r}")

    def _connected(self) -> socket.socket | None:
        if not self.usable:
            return None
        if self._process is not None and self._process.poll() is not None:
            self._broken()
            if not self.usable:
                return None
        if self._sock is None:
            self._start()
        return self._sock

    def _start(self) -> None:
        import subprocess

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            for end in (ours, theirs):
                with contextlib.suppress(OSError):
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    SERVER_SCRIPT,
                    "--fd",
                    str(theirs.fileno()),
                    "--parent",
                    str(os.getpid()),
                ],
                pass_fds=(theirs.fileno(),),
                env={},  # nothing of the agent's: a job's env comes with its request
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",  # holds no folder of the agent's busy; a fork's cwd is its job folder
                start_new_session=True,
            )
        except OSError:
            ours.close()
            self._failures += 1
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours

    def failed(self) -> None:
        """The server's fork failed to become a supervisor: do not trust that server again."""
        self._broken()

    def _broken(self) -> None:
        """Drop the server (killed if it still runs); the next request starts another."""
        self._failures += 1
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()  # EOF: a healthy server exits by itself
            self._sock = None
        process, self._process = self._process, None
        if process is not None and os.getpid() == self._owner:
            with contextlib.suppress(OSError):
                process.kill()
            with contextlib.suppress(Exception):
                process.wait(timeout=1.0)


def _unsendable(request: dict[str, Any]) -> bool:
    """Whether a direct start would refuse this argv or env before anything runs (a NUL byte,
    a `=` in a name): such a request is not the fork server's to fail."""
    env = request.get("env", {})
    names_ok = all(name and "=" not in name and "\0" not in name for name in env)
    texts = [*env.values(), *request.get("argv", []), request.get("cwd", "")]
    return not names_ok or any("\0" in text for text in texts)


def _parse_reply(data: bytes) -> tuple[str, int, str]:
    kind, _, rest = data.decode("utf-8", errors="replace").partition(" ")
    seq, _, rest = rest.partition(" ")
    try:
        return kind, int(seq), rest
    except ValueError:
        return kind, -1, rest


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Return once `fd` is readable (or at EOF), awaited on the event loop."""
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await future
    finally:
        loop.remove_reader(fd)


async def read_handshake(fd: int) -> str:
    """The supervisor's one line on the pipe `fd` (non-blocking), or "" at EOF without one."""
    import asyncio

    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    data = b""
    while b"\n" not in data:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await _readable(loop, fd)
            continue
        if not chunk:
            break
        data += chunk
    line, _, _ = data.partition(b"\n")
    return line.decode("utf-8", errors="replace").strip() if b"\n" in data else ""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
