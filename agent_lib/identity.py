"""Who an agent is: a stable name per host and data dir, held by a lock while it runs.

A restarted agent must be the *same* agent to take back the jobs it left running, so its
name cannot be random. By default it is `<host>-<data dir hash>`; a second agent started on
the same data dir at the same time takes the next free slot (`...-1`, `...-2`), so two live
agents never share a name, and a restarted one gets the first free slot back (whichever
slot it gets, its jobs' folders are in the same data dir). An explicit `name` has one slot:
a second agent with that name on this host is refused.

The lock is an `flock` on `<data_dir>/agents/<name>.lock`: the kernel drops it when the
process dies, however it dies, so a SIGKILLed agent never leaves its name taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from agent_lib.errors import ConfigError

MAX_SLOTS = 64


@dataclass
class AgentIdentity:
    """A held agent name; `release()` (or the process's end) lets it go."""

    name: str
    lock_path: Path
    _handle: IO[str] | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()
            self._handle = None


def default_name(data_dir: Path, hostname: str | None = None) -> str:
    """`<host>-<6 hex of the data dir's path>`: the same on every start on this host."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:6]
    return f"{hostname or socket.gethostname()}-{digest}"


def claim_identity(data_dir: Path, name: str | None = None) -> AgentIdentity:
    """Take `name` (or the first free default slot) for this process."""
    folder = data_dir / "agents"
    folder.mkdir(parents=True, exist_ok=True)
    if name:
        held = _try_lock(folder, name)
        if held is None:
            raise ConfigError(
                f"an agent named {name!r} is already running on this host "
                f"({_holder(folder, name)}); stop it, or give this one another --name"
            )
        return held
    base = default_name(data_dir)
    for slot in range(MAX_SLOTS):
        held = _try_lock(folder, base if slot == 0 else f"{base}-{slot}")
        if held is not None:
            return held
    raise ConfigError(f"{MAX_SLOTS} agents already run on the data dir {data_dir}")


def _try_lock(folder: Path, name: str) -> AgentIdentity | None:
    path = folder / f"{_file_safe(name)}.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return AgentIdentity(name, path, handle)


def _holder(folder: Path, name: str) -> str:
    try:
        pid = (folder / f"{_file_safe(name)}.lock").read_text().strip()
    except OSError:
        return "pid unknown"
    return f"pid {pid}" if pid else "pid unknown"


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
