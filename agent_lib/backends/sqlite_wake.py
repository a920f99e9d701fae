"""SQLite wake-ups: an idle agent wakes the moment an item is pushed to its database file.

SQLite has no LISTEN/NOTIFY, and polling faster burns CPU. So each listening agent binds
a Unix datagram socket in a folder beside the database (`<db>-wake/`, mode 0700: only
the database's user can send), and every writer, after its transaction commits, sends
the queue's name to each socket there. Like a NOTIFY it is a hint, not a hand-off: the
agent still pops in a transaction, so a lost datagram costs at most one poll interval.
A socket whose agent is gone refuses the datagram and is removed by the sender.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import select
import socket
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".sock"
# AF_UNIX paths are limited to 108 bytes; longer ones go through the folder's descriptor.
MAX_DIRECT_PATH = 100


def wake_dir_for(database: str | None) -> Path | None:
    """The wake-up folder for a SQLite database file (None for an in-memory database)."""
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return Path(f"{os.path.abspath(database)}-wake")


class _Folder:
    """The wake-up folder, addressed by short socket paths whatever its own length."""

    def __init__(self, path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def address(self, name: str) -> str:
        direct = str(self.path / name)
        return direct if len(direct) < MAX_DIRECT_PATH else f"/proc/self/fd/{self._fd}/{name}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class LocalWaker:
    """Tells the agents listening on one database file that queues may have items."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def announce(self, queues: set[str]) -> None:
        """Send each queue name ("" for any queue) to every listener; never raises."""
        try:
            names = [e.name for e in os.scandir(self._path) if e.name.endswith(SUFFIX)]
        except OSError:
            return  # no agent ever listened here
        if not names:
            return
        folder = _Folder(self._path)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                sender.setblocking(False)
                for name in names:
                    self._send(sender, folder, name, queues)
        except OSError as exc:
            log.debug("could not announce new items: %s", exc)
        finally:
            folder.close()

    @staticmethod
    def _send(sender: socket.socket, folder: _Folder, name: str, queues: set[str]) -> None:
        address = folder.address(name)
        for queue in queues:
            try:
                sender.sendto(queue.encode(), address)
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):  # its agent is gone
                    os.unlink(folder.path / name)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):  # a busy agent: fine
                    log.debug("could not wake %s: %s", name, exc)
                return


class LocalListener:
    """One agent's wake-up socket; `wait` is called from one watcher thread."""

    def __init__(self, path: Path) -> None:
        self._folder = _Folder(path)
        self._name = f"{os.getpid()}-{secrets.token_hex(6)}{SUFFIX}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self._folder.address(self._name))
        self._sock.setblocking(False)
        self._busy = threading.Lock()
        self._closed = False

    def wait(self, queues: list[str], timeout: float) -> bool:
        """Block until a datagram for one of `queues` or for any queue (True), or `timeout`."""
        with self._busy:
            if self._closed:
                return False
            readable, _, _ = select.select([self._sock], [], [], timeout)
            if not readable:
                return False
            return self._drain(queues)

    def _drain(self, queues: list[str]) -> bool:
        """Read every datagram waiting; whether any concerns `queues`."""
        wanted = False
        while True:
            try:
                queue = self._sock.recv(512).decode(errors="replace")
            except (BlockingIOError, InterruptedError):
                return wanted
            wanted = wanted or not queue or queue in queues

    def close(self) -> None:
        """Remove the socket (waiting briefly for a `wait` in progress to return)."""
        self._closed = True
        acquired = self._busy.acquire(timeout=3.0)
        try:
            with contextlib.suppress(OSError):
                os.unlink(self._folder.path / self._name)
            self._sock.close()
            self._folder.close()
        finally:
            if acquired:
                self._busy.release()
