"""Real agent processes on a real PostgreSQL, and jobs that count their own launches."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agent_lib.backends import SqlBackend
from agent_lib.backends.sql_url import sqlalchemy_url
from agent_lib.states import TERMINAL_ITEM_STATES, ItemState

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
    """`launch-agent run` as its own process; its log goes to data_dir/agent.log."""
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ,
        "LAUNCH_AGENT_POLL_INTERVAL": "0.05",
        "LAUNCH_AGENT_HEARTBEAT_INTERVAL": "0.25",
        "LAUNCH_AGENT_STOP_CHECK_INTERVAL": "0.2",
        **{f"LAUNCH_AGENT_{k.upper()}": v for k, v in env.items()},
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent_lib.cli",
            "run",
            "--backend",
            url,
            "--data-dir",
            str(data_dir),
            *args,
        ],
        stdout=(data_dir / "agent.log").open("ab"),
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=REPO,
    )


def open_db(url: str, **kwargs: Any) -> SqlBackend:
    return SqlBackend(sqlalchemy_url(url), **kwargs)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


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
