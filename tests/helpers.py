"""Helpers for agent tests: fast configs, running an agent, jobs that record what they saw."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_lib import AgentConfig, LaunchAgent
from agent_lib.backends import SqlBackend, open_backend
from agent_lib.backends.base import ItemInfo
from agent_lib.files import job_dir_for
from agent_lib.runners import supervisor
from agent_lib.states import TERMINAL_ITEM_STATES

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent

FAST = {
    "poll_interval": 0.02,
    "heartbeat_interval": 0.1,
    "stop_check_interval": 0.05,
    "status_interval": 5.0,
    "cancel_grace": 2.0,
}


def fast_config(data_dir: Path, **overrides: Any) -> AgentConfig:
    return AgentConfig.load(None, data_dir=data_dir, **{**FAST, **overrides})


def run_agent(backend: SqlBackend, config: AgentConfig, timeout: float = 60) -> LaunchAgent:
    """Run an agent in this process until it stops by itself (exit_when_idle, stopPolling)."""
    agent = LaunchAgent(backend, config)
    asyncio.run(asyncio.wait_for(agent.loop(), timeout))
    return agent


def py_job(code: str) -> dict[str, Any]:
    """A launch spec whose job runs a Python snippet in a local process."""
    return {"resource": "local-process", "overrides": {"entry_point": [PYTHON, "-c", code]}}


def sh_job(script: str) -> dict[str, Any]:
    return {"resource": "local-process", "overrides": {"entry_point": ["sh", "-c", script]}}


def record_job(log: Path, sleep: float = 0.0, tag: str = "", meet: int = 0) -> dict[str, Any]:
    """A job that appends `start/end <time> <item> <queue> <tag>` lines to `log`.

    `meet`: after its start, it waits (up to 60 s) until `meet` jobs have started, so
    jobs that run at the same time overlap however slowly the agent starts them."""
    code = (
        "import os, sys, time\n"
        "def note(kind):\n"
        "    line = f\"{kind} {time.time():.6f} {os.environ['WANDB_LAUNCH_TRACE_ID']} "
        "{os.environ['WANDB_LAUNCH_QUEUE_NAME']} " + tag + '\\n"\n'
        f"    fd = os.open({str(log)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
        "    os.write(fd, line.encode()); os.close(fd)\n"
        "note('start')\n"
        f"deadline = time.time() + 60\n"
        f"while open({str(log)!r}).read().count('start ') < {meet} and time.time() < deadline:\n"
        "    time.sleep(0.02)\n"
        f"time.sleep({sleep})\n"
        "note('end')\n"
    )
    return py_job(code)


def read_records(log: Path) -> list[tuple[str, float, str, str, str]]:
    rows = []
    for line in log.read_text().splitlines():
        kind, stamp, item, queue, *tag = line.split(" ")
        rows.append((kind, float(stamp), item, queue, " ".join(tag)))
    return rows


def max_overlap(log: Path) -> int:
    """The most jobs that were running at the same moment, from their own records."""
    events = sorted((stamp, 1 if kind == "start" else -1) for kind, stamp, *_ in read_records(log))
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    stat = supervisor.proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def wait_for(
    predicate: Any, timeout: float = 30, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll `predicate` until it returns something truthy; fail saying what never came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def all_ended(backend: SqlBackend, ids: list[str]) -> bool:
    return all(_state_is_terminal(backend.get_item(i)) for i in ids)


def _state_is_terminal(info: ItemInfo | None) -> bool:
    return info is not None and info.state in TERMINAL_ITEM_STATES


def start_agent_process(
    db_url: str,
    data_dir: Path,
    *args: str,
    log_file: Path | None = None,
    **settings: str,
) -> subprocess.Popen[bytes]:
    """`launch-agent run` as a real process; its output goes to `data_dir/agent.log`.

    `settings` are config keys passed as LAUNCH_AGENT_<KEY> (fast intervals by default).
    """
    fast = {"poll_interval": "0.02", "heartbeat_interval": "0.1", "stop_check_interval": "0.05"}
    env = {
        **os.environ,
        **{f"LAUNCH_AGENT_{k.upper()}": v for k, v in {**fast, **settings}.items()},
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    out = (log_file or data_dir / "agent.log").open("ab")
    return subprocess.Popen(
        [
            PYTHON,
            "-m",
            "agent_lib.cli",
            "run",
            "--backend",
            db_url,
            "--data-dir",
            str(data_dir),
            *args,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )


@dataclass(kw_only=True)
class QueueHarness:
    """One queue in its own SQLite file, and in-process agents that serve it with
    `resource` by default (the docker and kubernetes tests add their engine's views)."""

    data_dir: Path
    db_url: str
    queue: str
    config: dict[str, Any] = field(default_factory=dict)
    resource: str = "local-process"

    def __post_init__(self) -> None:
        self.db = open_backend(self.db_url)

    def agent_defaults(self) -> dict[str, Any]:
        """Config keys this kind of harness adds (a kubeconfig, say)."""
        return {}

    def agent_config(self, **overrides: Any) -> AgentConfig:
        values = {
            **FAST,
            "cancel_grace": 1.0,
            "queues": [self.queue],
            "max_jobs": 4,
            "default_resource": self.resource,
            "exit_when_idle": True,
            **self.agent_defaults(),
            **self.config,
            **overrides,
        }
        return AgentConfig.load(None, data_dir=self.data_dir, **values)

    def push(self, spec: dict[str, Any]) -> str:
        return self.db.push_to_run_queue(self.queue, spec, None, None, None)

    def run(self, timeout: float = 90, **overrides: Any) -> LaunchAgent:
        """Run an agent in this process until the queue is empty and its jobs ended."""
        agent = LaunchAgent(self.db, self.agent_config(**overrides))
        asyncio.run(asyncio.wait_for(agent.loop(), timeout))
        return agent

    def item(self, item_id: str) -> ItemInfo:
        info = self.db.get_item(item_id)
        assert info is not None
        return info

    def wait_ended(self, ids: list[str], timeout: float = 60) -> list[ItemInfo]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [self.item(i) for i in ids]
            if all(i.state in TERMINAL_ITEM_STATES for i in infos):
                return infos
            time.sleep(0.05)
        raise AssertionError(f"items not ended in {timeout}s: {[self.item(i) for i in ids]}")

    def job_dir(self, item_id: str) -> Path:
        info = self.item(item_id)
        assert info.run_id, f"item {item_id} has no run id: {info}"
        return job_dir_for(self.data_dir / "jobs", item_id, info.run_id)

    def output(self, item_id: str) -> str:
        """The job's output so far ("" before its first line)."""
        try:
            return (self.job_dir(item_id) / "output.log").read_text()
        except FileNotFoundError:
            return ""
