"""Stop, preemption and time limits, on real agent processes and real jobs.

- `launch-agent cancel` on a running item: the job gets SIGTERM at once (no
  stopped_run_timeout on our own queues), the item ends STOPPED saying who asked.
- A job ended from outside by SIGTERM, or by one of `preempt_exit_codes`, is PREEMPTED and
  resumes as the same run (`WANDB_RESUME=allow`, `_resume_count` + 1), up to
  `max_resume_count`, then FAILED saying so.
- `max_runtime` stops a job that runs too long and fails it in phase run with its log.
- `start_timeout` fails a job that never leaves `starting`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_lib import ItemState
from agent_lib.backends import SqlBackend
from agent_lib.runners import LaunchContext, Status, SubmittedRun, register_runner
from agent_lib.states import RunState
from tests.helpers import alive, fast_config, run_agent, sh_job, start_agent_process, wait_for

pytestmark = pytest.mark.timeout(120)


def pid_job(pids: Path, script_after: str) -> dict[str, Any]:
    """A job that notes `<item> <pid> <run id> <resume>` in `pids`, then runs `script_after`."""
    note = f'echo "$WANDB_LAUNCH_TRACE_ID $$ $WANDB_RUN_ID ${{WANDB_RESUME:-no}}" >> {pids}; '
    return sh_job(note + script_after)


def noted(pids: Path) -> list[list[str]]:
    return [line.split() for line in pids.read_text().splitlines()] if pids.exists() else []


def cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_lib.cli", *args, "--backend", db_url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cancel_stops_a_running_job_at_once_and_says_who_asked(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    item_id = backend.push_to_run_queue("default", pid_job(pids, "sleep 120"))
    agent = start_agent_process(db_url, tmp_path / "agent", stopped_run_timeout="600")
    try:
        [[_, pid, *_]] = wait_for(lambda: noted(pids), what="the job's start")
        done = cli(db_url, "cancel", item_id)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: not alive(int(pid)), what="the job's process to end")
        info = wait_for(
            lambda: (i := backend.get_item(item_id)) and i.state.is_terminal and i, what="the end"
        )
        assert info.state is ItemState.STOPPED
        assert info.stop_requested_by
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0


RESUMABLE = 'if [ "$WANDB_RESUME" = allow ]; then exit 0; fi; sleep 120'


def test_a_job_sigtermed_from_outside_resumes_as_the_same_run(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    item_id = backend.push_to_run_queue("default", pid_job(pids, RESUMABLE))
    agent = start_agent_process(db_url, tmp_path / "agent", "--exit-when-idle")
    [[_, pid, run_id, resume]] = wait_for(lambda: noted(pids), what="the job's start")
    assert resume == "no"

    os.kill(int(pid), signal.SIGTERM)  # a spot reclaim, a node drain

    assert agent.wait(timeout=60) == 0
    first = backend.get_item(item_id)
    assert first is not None and first.state is ItemState.PREEMPTED
    [resumed] = [i for i in backend.list_items() if i.id != item_id]
    assert resumed.state is ItemState.FINISHED
    assert resumed.run_spec["_resume_count"] == 1 and resumed.run_spec["run_id"] == run_id
    assert noted(pids)[1] == [resumed.id, noted(pids)[1][1], run_id, "allow"]


def test_preempt_exit_codes_and_the_resume_limit(backend: SqlBackend, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    item_id = backend.push_to_run_queue("default", pid_job(pids, "exit 75"))

    run_agent(
        backend,
        fast_config(tmp_path, exit_when_idle=True, preempt_exit_codes=[75], max_resume_count=2),
    )

    runs = noted(pids)
    assert len(runs) == 3, "the first run and two resumes"
    assert {run[2] for run in runs} == {runs[0][2]}, "all as the same run"
    items = sorted(backend.list_items(), key=lambda i: int(i.id))
    assert [i.state for i in items] == [ItemState.PREEMPTED, ItemState.PREEMPTED, ItemState.FAILED]
    assert items[0].id == item_id
    last = items[-1]
    assert last.failure_phase == "run"
    assert "already resumed 2 times (max_resume_count 2)" in (last.failure_message or "")


def test_max_runtime_stops_the_job_and_fails_it_with_its_log(
    backend: SqlBackend, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    spec = {**pid_job(pids, "echo working hard; sleep 120"), "max_runtime": 1}
    item_id = backend.push_to_run_queue("default", spec)

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True))

    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FAILED
    assert info.failure_phase == "run"
    assert info.failure_message == "the job exceeded its maximum run time of 1 s and was stopped"
    assert any("working hard" in text for text in info.files.values())
    [[_, pid, *_]] = noted(pids)
    assert not alive(int(pid))


class _NeverStarts(SubmittedRun):
    """A run that stays `starting` (a container waiting for an image, a pending pod)."""

    def __init__(self) -> None:
        self._cancelled = asyncio.Event()

    @property
    def id(self) -> str:
        return "stuck"

    async def get_status(self) -> Status:
        return Status(RunState.STOPPED if self._cancelled.is_set() else RunState.STARTING)

    async def wait(self) -> Status:
        await self._cancelled.wait()
        return Status(RunState.STOPPED, reason="cancelled")

    async def cancel(self, grace: float = 10.0) -> None:
        self._cancelled.set()

    async def get_logs(self, tail: int | None = None) -> str:
        return "pulling image...\n"


class _StuckRunner:
    resource = "stuck-before-start"

    async def run(self, context: LaunchContext) -> SubmittedRun:
        return _NeverStarts()

    async def find(self, context: LaunchContext) -> SubmittedRun | None:
        return None


def test_start_timeout_fails_a_job_that_never_starts(backend: SqlBackend, tmp_path: Path) -> None:
    register_runner(_StuckRunner.resource, lambda _config: _StuckRunner())
    item_id = backend.push_to_run_queue(
        "default", {"resource": _StuckRunner.resource, "overrides": {"entry_point": ["x"]}}
    )

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True, start_timeout=0.5))

    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FAILED
    assert info.failure_phase == "run"
    assert info.failure_message == "the job did not start within 0.5 s"
    assert any("pulling image" in text for text in info.files.values())
