"""The local-process runner on real processes: jobs outlive their agent and are found again.

The "agent" that dies is a child Python process running the runner; the job's supervisor
must survive it, and a new runner must re-attach (or read the recorded end) without ever
starting the job a second time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_lib.errors import LaunchError, SpecError
from agent_lib.runners import supervisor
from agent_lib.runners.base import LaunchContext, Status
from agent_lib.runners.local_process import (
    SUPERVISOR_DIED,
    LocalProcessRunner,
    LocalSubmittedRun,
)
from agent_lib.spec import LaunchSpec
from agent_lib.states import RunState
from tests.helpers import alive

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0  # generous: only reached when something is wrong

# Runs the runner in a separate process (the "agent"), prints the job's pid, then dies.
AGENT = """
import asyncio, json, os, sys, time
from pathlib import Path
from agent_lib.runners.base import LaunchContext
from agent_lib.runners.local_process import LocalProcessRunner
from agent_lib.spec import LaunchSpec

job_dir, command, how = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]

async def main() -> None:
    context = LaunchContext(
        item_id="item", queue="q", run_id="run", spec=LaunchSpec(), command=command,
        image=None, env={}, job_dir=job_dir, log_path=job_dir / "output.log",
    )
    run = await LocalProcessRunner().run(context)
    print(run.pid, flush=True)
    if how == "exit":
        os._exit(0)
    time.sleep(60)  # until the test SIGKILLs us

asyncio.run(main())
"""


def make_context(
    job_dir: Path,
    command: list[str],
    env: dict[str, str] | None = None,
    resource_args: dict[str, Any] | None = None,
    host_env: dict[str, str] | None = None,
) -> LaunchContext:
    return LaunchContext(
        item_id="item",
        queue="q",
        run_id="run",
        spec=LaunchSpec(),
        command=command,
        image=None,
        env=env or {},
        job_dir=job_dir,
        log_path=job_dir / "output.log",
        resource_args=resource_args or {},
        host_env={"PATH": os.environ["PATH"], **(host_env or {})},
    )


def gated_job(tmp_path: Path, code: int = 3) -> list[str]:
    """A job that notes its start in `marker`, then exits with `code` once `go` exists."""
    script = (
        f"echo started >> {tmp_path / 'marker'}; "
        f"while [ ! -e {tmp_path / 'go'} ]; do sleep 0.01; done; exit {code}"
    )
    return ["sh", "-c", script]


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group `pgid`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def marker_lines(tmp_path: Path) -> list[str]:
    marker = tmp_path / "marker"
    return marker.read_text().splitlines() if marker.exists() else []


def start_agent(tmp_path: Path, command: list[str], how: str) -> tuple[subprocess.Popen[str], int]:
    """Start a job from a separate agent process; its job's pid once the job runs."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(tmp_path / "job"), json.dumps(command), how],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert agent.stdout is not None
    pid = int(agent.stdout.readline())
    return agent, pid


async def run_job(context: LaunchContext) -> Status:
    run = await LocalProcessRunner().run(context)
    return await asyncio.wait_for(run.wait(), TIMEOUT)


# -- a job's life in one agent -------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("exit 0", Status(RunState.FINISHED, exit_code=0)),
        ("echo out; echo err >&2; exit 3", Status(RunState.FAILED, exit_code=3)),
        ("kill -9 $$", Status(RunState.FAILED, -9, "killed by signal SIGKILL")),
    ],
)
def test_a_job_ends_with_its_exit_status(tmp_path: Path, script: str, expected: Status) -> None:
    assert asyncio.run(run_job(make_context(tmp_path / "job", ["sh", "-c", script]))) == expected


def test_the_job_gets_its_env_cwd_and_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's environment is the context's (host part, item's env, contract), never the
    agent process's own."""
    monkeypatch.setenv("LAUNCH_AGENT_SECRET", "agent-only")
    (tmp_path / "elsewhere").mkdir()
    context = make_context(
        tmp_path / "job",
        ["sh", "-c", 'echo "$FROM_AGENT $A $B ${LAUNCH_AGENT_SECRET:-none} $(pwd)"'],
        env={"B": "contract"},
        resource_args={"env": {"A": "args", "B": "args"}, "cwd": str(tmp_path / "elsewhere")},
        host_env={"FROM_AGENT": "yes"},
    )

    async def scenario() -> str:
        run = await LocalProcessRunner().run(context)
        assert (await asyncio.wait_for(run.wait(), TIMEOUT)).state is RunState.FINISHED
        return await run.get_logs(tail=1)

    assert asyncio.run(scenario()) == f"yes args contract none {tmp_path / 'elsewhere'}\n"
    assert (tmp_path / "job" / "work").is_dir()


@pytest.mark.parametrize(
    ("command", "cwd", "message"),
    [
        (["no-such-command-xyz"], None, "command not found: 'no-such-command-xyz'"),
        ([__file__], None, f"command not executable: {__file__!r}"),
        (["true"], "missing", "working directory does not exist: "),
    ],
)
def test_a_job_that_cannot_start_raises_launch_error(
    tmp_path: Path, command: list[str], cwd: str | None, message: str
) -> None:
    args = {"cwd": str(tmp_path / cwd)} if cwd else {}
    context = make_context(tmp_path / "job", command, resource_args=args)
    with pytest.raises(LaunchError, match="^" + message.replace("(", r"\(")):
        asyncio.run(LocalProcessRunner().run(context))
    # Asked again (a restarted agent), the same answer, and still nothing started.
    with pytest.raises(LaunchError, match="^" + message.replace("(", r"\(")):
        asyncio.run(LocalProcessRunner().run(context))


def test_an_empty_command_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="nothing to run"):
        asyncio.run(LocalProcessRunner().run(make_context(tmp_path / "job", [])))


def test_cancel_stops_the_job_and_its_whole_group(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    # The leader dies on SIGTERM; a straggler in its group ignores it and must be killed too.
    script = f"(trap '' TERM; touch {ready}; sleep 30) & sleep 30"

    async def scenario() -> tuple[int, Status, Status]:
        run = await LocalProcessRunner().run(make_context(tmp_path / "job", ["sh", "-c", script]))
        assert (await run.get_status()).state is RunState.RUNNING
        await asyncio.to_thread(wait_until, ready.exists)
        await asyncio.wait_for(run.cancel(grace=TIMEOUT), TIMEOUT)
        return run.pid, await run.get_status(), await run.wait()

    pid, status, waited = asyncio.run(scenario())
    assert status == waited == Status(RunState.STOPPED, -signal.SIGTERM, "cancelled")
    wait_until(lambda: not group_alive(pid))


def test_cancel_kills_a_job_that_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f"trap '' TERM; touch {ready}; sleep 30 & wait"

    async def scenario() -> tuple[int, Status, float]:
        run = await LocalProcessRunner().run(make_context(tmp_path / "job", ["sh", "-c", script]))
        await asyncio.to_thread(wait_until, ready.exists)
        started = time.monotonic()
        await asyncio.wait_for(run.cancel(grace=0.2), TIMEOUT)
        return run.pid, await run.wait(), time.monotonic() - started

    pid, status, took = asyncio.run(scenario())
    assert status == Status(RunState.STOPPED, -signal.SIGKILL, "cancelled")
    assert took >= 0.2
    wait_until(lambda: not group_alive(pid))


def test_a_stray_sigterm_to_the_supervisor_ends_the_job_and_is_recorded(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, Status]:
        run = await LocalProcessRunner().run(
            make_context(tmp_path / "job", ["sh", "-c", "sleep 30"])
        )
        os.kill(run.supervisor_pid, signal.SIGTERM)
        return run.pid, await asyncio.wait_for(run.wait(), TIMEOUT)

    pid, status = asyncio.run(scenario())
    # A SIGTERM from outside the agent (a host shutting down) preempts the job.
    assert status == Status(
        RunState.PREEMPTED, -signal.SIGTERM, "ended by SIGTERM from outside the agent"
    )
    wait_until(lambda: not group_alive(pid))


# -- exactly once ---------------------------------------------------------------------------


def test_two_concurrent_runs_start_the_job_once(tmp_path: Path) -> None:
    context = make_context(tmp_path / "job", gated_job(tmp_path, code=0))

    async def scenario() -> list[Status]:
        runner = LocalProcessRunner()
        first, second = await asyncio.gather(runner.run(context), runner.run(context))
        assert first.pid == second.pid
        await asyncio.to_thread(wait_until, lambda: len(marker_lines(tmp_path)) == 1)
        (tmp_path / "go").touch()
        statuses = await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), TIMEOUT)
        again = await runner.run(context)  # after its end: its recorded end, no new start
        return [*statuses, await again.get_status()]

    assert asyncio.run(scenario()) == [Status(RunState.FINISHED, exit_code=0)] * 3
    assert marker_lines(tmp_path) == ["started"]


def test_find_before_any_run_finds_nothing(tmp_path: Path) -> None:
    context = make_context(tmp_path / "job", ["true"])
    assert asyncio.run(LocalProcessRunner().find(context)) is None


# -- the agent dies, the job goes on ----------------------------------------------------------


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_new_agent_reattaches_to_a_running_job(tmp_path: Path, how: str) -> None:
    agent, pid = start_agent(tmp_path, gated_job(tmp_path), how)
    if how == "sigkill":
        agent.kill()
    assert agent.wait(timeout=TIMEOUT) in (0, -signal.SIGKILL)
    context = make_context(tmp_path / "job", gated_job(tmp_path))

    async def scenario() -> tuple[Status, Status, Status]:
        runner = LocalProcessRunner()
        found = await runner.find(context)
        assert isinstance(found, LocalSubmittedRun) and found.pid == pid
        running = await found.get_status()
        again = await runner.run(context)  # must not start it a second time
        assert again.pid == pid
        ended = asyncio.ensure_future(found.wait())
        await asyncio.sleep(0)
        assert not ended.done()
        (tmp_path / "go").touch()
        return running, await asyncio.wait_for(ended, TIMEOUT), await again.wait()

    running, status, again = asyncio.run(scenario())
    assert running.state is RunState.RUNNING
    assert status == again == Status(RunState.FAILED, exit_code=3)
    assert marker_lines(tmp_path) == ["started"]


def test_status_seen_before_the_loop_notices_the_exit_does_not_break_a_wait(
    tmp_path: Path,
) -> None:
    """The agent asks get_status while it waits: the one that sees the end must not cancel
    the other."""
    agent, _ = start_agent(tmp_path, gated_job(tmp_path), "exit")
    agent.wait(timeout=TIMEOUT)
    context = make_context(tmp_path / "job", gated_job(tmp_path))

    async def scenario() -> tuple[Status, Status]:
        found = await LocalProcessRunner().find(context)
        assert found is not None
        ended = asyncio.ensure_future(found.wait())
        await asyncio.sleep(0)  # the wait now watches the supervisor's pidfd
        (tmp_path / "go").touch()
        wait_until(lambda: not alive(found.supervisor_pid))  # the loop does not run meanwhile
        status = await found.get_status()
        return status, await asyncio.wait_for(ended, TIMEOUT)

    assert asyncio.run(scenario()) == (Status(RunState.FAILED, exit_code=3),) * 2


def test_a_job_that_ended_while_the_agent_was_away_reports_its_end_at_once(
    tmp_path: Path,
) -> None:
    agent, _ = start_agent(tmp_path, gated_job(tmp_path), "exit")
    agent.wait(timeout=TIMEOUT)
    (tmp_path / "go").touch()
    wait_until((tmp_path / "job" / "supervisor" / "exit.json").exists)
    context = make_context(tmp_path / "job", gated_job(tmp_path))

    async def scenario() -> tuple[Status, Status]:
        found = await LocalProcessRunner().find(context)
        assert found is not None
        run = await LocalProcessRunner().run(context)
        return await found.get_status(), await asyncio.wait_for(run.wait(), 0.5)

    assert asyncio.run(scenario()) == (Status(RunState.FAILED, exit_code=3),) * 2
    assert marker_lines(tmp_path) == ["started"]


def test_a_found_job_can_be_cancelled(tmp_path: Path) -> None:
    agent, pid = start_agent(tmp_path, gated_job(tmp_path), "exit")
    agent.wait(timeout=TIMEOUT)
    context = make_context(tmp_path / "job", gated_job(tmp_path))

    async def scenario() -> Status:
        found = await LocalProcessRunner().find(context)
        assert found is not None
        await asyncio.wait_for(found.cancel(grace=TIMEOUT), TIMEOUT)
        return await found.wait()

    assert asyncio.run(scenario()) == Status(RunState.STOPPED, -signal.SIGTERM, "cancelled")
    wait_until(lambda: not group_alive(pid))
    # Another agent reading the end later also sees a cancelled job.
    found = asyncio.run(LocalProcessRunner().find(context))
    assert found is not None and asyncio.run(found.get_status()).reason == "cancelled"


# -- the supervisor dies ----------------------------------------------------------------------


def test_a_killed_supervisor_takes_its_job_along_and_the_failure_is_found(
    tmp_path: Path,
) -> None:
    agent, pid = start_agent(tmp_path, gated_job(tmp_path), "exit")
    agent.wait(timeout=TIMEOUT)
    context = make_context(tmp_path / "job", gated_job(tmp_path))
    expected = Status(RunState.FAILED, reason=SUPERVISOR_DIED)

    async def scenario() -> Status:
        found = await LocalProcessRunner().find(context)
        assert found is not None
        ended = asyncio.ensure_future(found.wait())
        os.kill(found.supervisor_pid, signal.SIGKILL)
        return await asyncio.wait_for(ended, TIMEOUT)

    assert asyncio.run(scenario()) == expected
    wait_until(lambda: not alive(pid))  # PR_SET_PDEATHSIG
    found = asyncio.run(LocalProcessRunner().find(context))
    assert found is not None and asyncio.run(found.get_status()) == expected
    # ... and run() does not start it again.
    again = asyncio.run(LocalProcessRunner().run(context))
    assert asyncio.run(again.wait()) == expected
    assert marker_lines(tmp_path) == ["started"]


def test_killing_our_own_supervisor_is_seen_and_leaves_no_stragglers(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    # `sleep` is not the leader: pdeathsig does not reach it, the runner must.
    script = f"sleep 30 & touch {ready}; wait"

    async def scenario() -> tuple[int, Status]:
        run = await LocalProcessRunner().run(make_context(tmp_path / "job", ["sh", "-c", script]))
        await asyncio.to_thread(wait_until, ready.exists)
        os.kill(run.supervisor_pid, signal.SIGKILL)
        return run.pid, await asyncio.wait_for(run.wait(), TIMEOUT)

    pid, status = asyncio.run(scenario())
    assert status == Status(RunState.FAILED, reason=SUPERVISOR_DIED)
    wait_until(lambda: not group_alive(pid))


def ticks(pid: int) -> int:
    found = supervisor.start_ticks(pid)
    assert found is not None
    return found


def write_records(job_dir: Path, claim: dict[str, Any], child: dict[str, Any] | None) -> None:
    folder = job_dir / "supervisor"
    folder.mkdir(parents=True)
    (folder / "claim.json").write_text(json.dumps({"launch_id": "x", **claim}))
    if child is not None:
        (folder / "child.json").write_text(json.dumps(child))


def test_a_reused_pid_is_not_taken_for_the_supervisor_or_the_job(tmp_path: Path) -> None:
    """Records naming live pids with other start times: dead, and the live ones are spared."""
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        me = os.getpid()
        write_records(
            tmp_path / "job",
            {"supervisor_pid": me, "supervisor_start_ticks": ticks(me) - 1},
            {"pid": bystander.pid, "start_ticks": ticks(bystander.pid) - 1},
        )
        context = make_context(tmp_path / "job", ["sh", "-c", f"touch {tmp_path / 'ran'}"])
        found = asyncio.run(LocalProcessRunner().find(context))
        assert found is not None
        assert asyncio.run(found.get_status()) == Status(RunState.FAILED, reason=SUPERVISOR_DIED)
        assert alive(bystander.pid)
        asyncio.run(LocalProcessRunner().run(context))
        assert not (tmp_path / "ran").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_dead_supervisors_job_still_running_is_killed(tmp_path: Path) -> None:
    orphan = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        write_records(
            tmp_path / "job",
            {"supervisor_pid": orphan.pid, "supervisor_start_ticks": 0},  # not it: dead
            {"pid": orphan.pid, "start_ticks": ticks(orphan.pid)},
        )
        found = asyncio.run(LocalProcessRunner().find(make_context(tmp_path / "job", ["true"])))
        assert found is not None
        assert orphan.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        orphan.kill()
        orphan.wait()


def test_a_zombie_supervisor_counts_as_dead(tmp_path: Path) -> None:
    zombie = subprocess.Popen(["true"])
    try:
        wait_until(lambda: not alive(zombie.pid))  # exited, not reaped yet
        write_records(
            tmp_path / "job",
            {"supervisor_pid": zombie.pid, "supervisor_start_ticks": ticks(zombie.pid)},
            None,
        )
        found = asyncio.run(LocalProcessRunner().find(make_context(tmp_path / "job", ["true"])))
        assert found is not None
        assert asyncio.run(found.get_status()).reason == SUPERVISOR_DIED
    finally:
        zombie.wait()


def test_stderr_lines_are_marked_in_the_log(tmp_path: Path) -> None:
    context = make_context(
        tmp_path / "job", ["sh", "-c", "echo out; echo err >&2; printf partial >&2; exit 2"]
    )

    async def scenario() -> str:
        run = await LocalProcessRunner().run(context)
        assert (await asyncio.wait_for(run.wait(), TIMEOUT)).exit_code == 2
        return await run.get_logs()

    logged = asyncio.run(scenario())
    assert "out\n" in logged
    assert "[stderr] err\n" in logged and "[stderr] partial\n" in logged
    assert "[stderr] out" not in logged
