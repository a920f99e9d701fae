"""A chaos run: agents SIGKILLed and restarted at random while short jobs run.

Used by tests/test_chaos.py (small) and bench/bench_chaos.py (large). Each job notes its
start and exit in a ledger; at the end the ledger, the queue and /proc say whether any
item got a wrong or lost outcome, any job started twice, or any process was orphaned.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_lib import ItemState
from agent_lib.backends import SqlBackend
from tests.helpers import all_ended, sh_job, start_agent_process

FAILING_EXIT_CODE = 3


@dataclass
class ChaosReport:
    items: int
    kills: int
    restarts_after_reap: int
    seconds: float
    wrong: list[str] = field(default_factory=list)
    started_twice: list[str] = field(default_factory=list)
    never_ended: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)

    @property
    def clean(self) -> bool:
        return not (self.wrong or self.started_twice or self.never_ended or self.orphans)

    def summary(self) -> str:
        return (
            f"{self.items} items, {self.kills} SIGKILLs ({self.restarts_after_reap} restarted "
            f"only after being reaped as lost), {self.seconds:.1f}s: "
            f"{dict(self.states)}; wrong outcome {len(self.wrong)}, started twice "
            f"{len(self.started_twice)}, never ended {len(self.never_ended)}, orphans "
            f"{len(self.orphans)}"
        )


def ledger_job(ledger: Path, seconds: float, code: int) -> dict[str, Any]:
    script = (
        f'echo "start $WANDB_LAUNCH_TRACE_ID $$" >> {ledger}; sleep {seconds:.2f}; '
        f'echo "output of $WANDB_LAUNCH_TRACE_ID"; '
        f'echo "exit $WANDB_LAUNCH_TRACE_ID $$" >> {ledger}; exit {code}'
    )
    return sh_job(script)


def run_chaos(
    backend: SqlBackend,
    db_url: str,
    workdir: Path,
    items: int = 100,
    agents: int = 2,
    max_kills: int = 12,
    seed: int = 0,
    agent_timeout: float = 2.0,
    deadline_seconds: float = 240.0,
) -> ChaosReport:
    """Push `items` jobs, run `agents` agents, SIGKILL one at random up to `max_kills`
    times (restarting it at once, or after its agent_timeout so another reaps it first),
    then let fresh agents drain the queue and check every outcome."""
    rng = random.Random(seed)
    ledger = workdir / "ledger"
    expected: dict[str, int] = {}
    for n in range(items):
        code = FAILING_EXIT_CODE if n % 5 == 0 else 0
        item_id = backend.push_to_run_queue(
            "default", ledger_job(ledger, rng.uniform(0.05, 0.6), code)
        )
        expected[item_id] = code
    settings = {"agent_timeout": str(agent_timeout), "heartbeat_interval": "0.1"}

    def start(n: int, *extra: str) -> subprocess.Popen[bytes]:
        data_dir = workdir / f"agent{n}"
        return start_agent_process(db_url, data_dir, "-j", "4", *extra, **settings)

    began = time.monotonic()
    running = [start(n) for n in range(agents)]
    kills = reaped = 0
    while kills < max_kills and not all_ended(backend, list(expected)):
        time.sleep(rng.uniform(0.3, 1.2))
        victim = rng.randrange(agents)
        running[victim].send_signal(signal.SIGKILL)
        running[victim].wait(timeout=30)
        kills += 1
        if rng.random() < 0.25:  # stay away long enough to be reaped as lost
            reaped += 1
            time.sleep(agent_timeout + 1.0)
        running[victim] = start(victim)
    for process in running:  # the survivors: a clean stop, then a final drain
        process.send_signal(signal.SIGTERM)
    for process in running:
        process.wait(timeout=deadline_seconds)
    drains = [start(n, "--exit-when-idle") for n in range(agents)]
    for process in drains:
        process.wait(timeout=deadline_seconds)
    report = ChaosReport(items, kills, reaped, time.monotonic() - began)
    _check(backend, expected, ledger, workdir, report)
    return report


def _check(
    backend: SqlBackend, expected: dict[str, int], ledger: Path, workdir: Path, report: ChaosReport
) -> None:
    rows = [line.split() for line in ledger.read_text().splitlines()] if ledger.exists() else []
    starts = Counter(r[1] for r in rows if r[0] == "start")
    exits = Counter(r[1] for r in rows if r[0] == "exit")
    for item_id, code in expected.items():
        info = backend.get_item(item_id)
        state = info.state if info else None
        report.states[str(state)] += 1
        if starts[item_id] > 1:
            report.started_twice.append(item_id)
        if starts[item_id] != 1 or exits[item_id] != 1:
            report.never_ended.append(
                f"{item_id}: {starts[item_id]} start(s), {exits[item_id]} exit(s)"
            )
        if info is None or not _outcome_is_true(info, code):
            report.wrong.append(f"{item_id}: expected exit {code}, got {info}")
    pids = {int(r[2]) for r in rows if len(r) > 2}
    report.orphans = [f"job pid {pid}" for pid in sorted(pids) if _alive(pid)]
    report.orphans += _supervisors_under(workdir)


def _outcome_is_true(info: Any, code: int) -> bool:
    if code == 0:
        return bool(info.state is ItemState.FINISHED and info.exit_code == 0)
    return bool(
        info.state is ItemState.FAILED
        and info.failure_phase == "run"
        and info.exit_code == code
        and any(f"output of {info.id}" in text for text in info.files.values())
    )


def _alive(pid: int) -> bool:
    """Running (a zombie, whose exit is already recorded, does not count)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def _supervisors_under(workdir: Path) -> list[str]:
    """Job supervisors still running for this run's job folders."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "forkserver.py" in cmdline:  # a fork server's fork: its folder is its cwd
            with contextlib.suppress(OSError):
                cmdline += " cwd=" + os.readlink(entry / "cwd")
        supervised = "supervisor" in cmdline or "forkserver.py" in cmdline
        if supervised and str(workdir) in cmdline and _alive(int(entry.name)):
            found.append(f"supervisor pid {entry.name}: {cmdline[:200]}")
    return found
