"""Real agent processes on a real PostgreSQL, and jobs that count their own launches."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from agent_lib.backends import SqlBackend
from agent_lib.backends.sql_url import sqlalchemy_url
from agent_lib.states import TERMINAL_ITEM_STATES, ItemState
from tests.helpers import start_agent_process, wait_for

REPO = Path(__file__).resolve().parents[2]


def counting_job(trace: Path, sleep: float = 0.0) -> dict[str, Any]:
    """A job that appends its item id to `trace` (O_APPEND, one short write per launch)."""
    script = f'echo "$WANDB_LAUNCH_TRACE_ID" >> {trace}'
    if sleep:
        script += f"; sleep {sleep}"
    return {"resource": "local-process", "overrides": {"entry_point": ["sh", "-c", script]}}


def launches(trace: Path) -> Counter[str]:
    if not trace.exists():
        return Counter()
    return Counter(line for line in trace.read_text().split() if line)


def start_agent(url: str, data_dir: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """`launch-agent run` as its own process, with intervals kind to a shared database."""
    slower = {"poll_interval": "0.05", "heartbeat_interval": "0.25", "stop_check_interval": "0.2"}
    return start_agent_process(url, data_dir, *args, **{**slower, **env})


def open_db(url: str, **kwargs: Any) -> SqlBackend:
    return SqlBackend(sqlalchemy_url(url), **kwargs)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    return wait_for(predicate, timeout, interval, what)


def states(db: SqlBackend, ids: list[str]) -> Counter[ItemState]:
    wanted = set(ids)
    found = db.list_items(None, None, limit=100_000)
    return Counter(i.state for i in found if i.id in wanted)


def all_terminal(db: SqlBackend, ids: list[str]) -> bool:
    counts = states(db, ids)
    return sum(n for s, n in counts.items() if s in TERMINAL_ITEM_STATES) == len(ids)


def stop(procs: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
