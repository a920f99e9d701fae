"""The fork server that starts job supervisors: its death never costs or doubles a job.

A job's supervisor is a fork of the agent's fork server; the server may die (SIGKILL) with
jobs running or between jobs, get stuck, or lose its agent: jobs go on and end with their
true outcome, the next job still starts (exactly once), and a new agent re-attaches.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent_lib.runners import forkserver
from agent_lib.runners.base import Status
from agent_lib.runners.local_process import (
    FORK_SERVER_SWITCH,
    LocalProcessRunner,
    LocalSubmittedRun,
    fork_server,
)
from agent_lib.states import RunState
from tests.helpers import alive
from tests.test_local_process import (
    TIMEOUT,
    gated_job,
    group_alive,
    make_context,
    marker_lines,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent

# An agent in its own process: starts a gated job through the fork server, prints the job's
# pid, its supervisor's pid and the fork server's pid, then waits to be SIGKILLed.
AGENT = """
import asyncio, json, sys, time
from pathlib import Path
from agent_lib.runners.base import LaunchContext
from agent_lib.runners.local_process import LocalProcessRunner, fork_server
from agent_lib.spec import LaunchSpec

job_dir, command = Path(sys.argv[1]), json.loads(sys.argv[2])

async def main() -> None:
    context = LaunchContext(
        item_id="item", queue="q", run_id="run", spec=LaunchSpec(), command=command,
        image=None, env={}, job_dir=job_dir, log_path=job_dir / "output.log",
    )
    run = await LocalProcessRunner().run(context)
    print(run.pid, run.supervisor_pid, fork_server().server_pid, flush=True)
    time.sleep(60)

asyncio.run(main())
"""


def server_pid() -> int:
    client = fork_server()
    assert client is not None and client.server_pid is not None
    return client.server_pid


def parent_of(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2 :].split()[1])


def session_of(pid: int) -> int:
    return os.getsid(pid)


def test_a_supervisor_is_a_fork_of_the_server_in_its_own_session(tmp_path: Path) -> None:
    context = make_context(tmp_path / "job", gated_job(tmp_path, code=0))

    async def scenario() -> tuple[int, int, int, Status]:
        run = await LocalProcessRunner().run(context)
        server = server_pid()
        supervisor_pid = run.supervisor_pid
        parent = parent_of(supervisor_pid)
        assert session_of(supervisor_pid) == supervisor_pid  # its own session
        assert session_of(run.pid) == supervisor_pid and os.getpgid(run.pid) == run.pid
        (tmp_path / "go").touch()
        status = await asyncio.wait_for(run.wait(), TIMEOUT)
        # The server reaps its forks as they end (SIGCHLD wakes it): no zombies pile up.
        children = Path(f"/proc/{server}/task/{server}/children")
        await asyncio.to_thread(wait_until, lambda: children.read_text().split() == [])
        return server, parent, supervisor_pid, status

    server, parent, supervisor_pid, status = asyncio.run(scenario())
    assert parent == server != os.getpid()
    assert status == Status(RunState.FINISHED, exit_code=0)
    claim = json.loads((tmp_path / "job" / "supervisor" / "claim.json").read_text())
    assert claim["supervisor_pid"] == supervisor_pid
    assert marker_lines(tmp_path) == ["started"]


def test_jobs_outlive_a_killed_fork_server_and_end_with_their_outcome(tmp_path: Path) -> None:
    jobs = [tmp_path / f"job{n}" for n in range(3)]

    async def scenario() -> list[Status]:
        runner = LocalProcessRunner()
        runs = [
            await runner.run(make_context(job, gated_job(tmp_path, code=n)))
            for n, job in enumerate(jobs)
        ]
        server = server_pid()
        os.kill(server, signal.SIGKILL)
        await asyncio.to_thread(wait_until, lambda: not alive(server))
        await asyncio.to_thread(wait_until, lambda: len(marker_lines(tmp_path)) == 3)
        assert all(alive(run.supervisor_pid) and alive(run.pid) for run in runs)
        (tmp_path / "go").touch()
        return list(await asyncio.wait_for(asyncio.gather(*(r.wait() for r in runs)), TIMEOUT))

    statuses = asyncio.run(scenario())
    assert statuses == [
        Status(RunState.FINISHED, exit_code=0),
        Status(RunState.FAILED, exit_code=1),
        Status(RunState.FAILED, exit_code=2),
    ]
    assert marker_lines(tmp_path) == ["started"] * 3


def test_a_server_killed_between_jobs_does_not_stop_the_next_job(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Status], int, int]:
        runner = LocalProcessRunner()
        first = await runner.run(make_context(tmp_path / "a", ["true"]))
        statuses = [await asyncio.wait_for(first.wait(), TIMEOUT)]
        old = server_pid()
        os.kill(old, signal.SIGKILL)
        await asyncio.to_thread(wait_until, lambda: not alive(old))
        for name in ("b", "c", "d"):
            run = await runner.run(make_context(tmp_path / name, ["sh", "-c", "exit 4"]))
            statuses.append(await asyncio.wait_for(run.wait(), TIMEOUT))
        return statuses, old, server_pid()

    statuses, old, new = asyncio.run(scenario())
    assert (
        statuses
        == [Status(RunState.FINISHED, exit_code=0)] + [Status(RunState.FAILED, exit_code=4)] * 3
    )
    assert new != old  # a new server took over


def test_a_stuck_server_is_replaced_and_the_job_starts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forkserver.ForkServerClient, "REPLY_TIMEOUT", 0.5)
    context = make_context(tmp_path / "job", gated_job(tmp_path, code=0))

    async def scenario() -> tuple[int, int, Status]:
        runner = LocalProcessRunner()
        warm = await runner.run(make_context(tmp_path / "warm", ["true"]))
        await asyncio.wait_for(warm.wait(), TIMEOUT)
        stuck = server_pid()
        os.kill(stuck, signal.SIGSTOP)
        run = await asyncio.wait_for(runner.run(context), TIMEOUT)
        parent = parent_of(run.supervisor_pid)
        await asyncio.to_thread(wait_until, lambda: len(marker_lines(tmp_path)) == 1)
        (tmp_path / "go").touch()
        return parent, stuck, await asyncio.wait_for(run.wait(), TIMEOUT)

    parent, stuck, status = asyncio.run(scenario())
    assert parent == os.getpid()  # the fallback: started directly
    assert status == Status(RunState.FINISHED, exit_code=0)
    wait_until(lambda: not alive(stuck))  # killed, not left stopped
    assert marker_lines(tmp_path) == ["started"]


def test_the_agent_sigkilled_leaves_supervisors_and_jobs_running_and_reattachable(
    tmp_path: Path,
) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(tmp_path / "job"), json.dumps(gated_job(tmp_path))],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    assert agent.stdout is not None
    pid, supervisor_pid, server = (int(x) for x in agent.stdout.readline().split())
    agent.kill()
    assert agent.wait(timeout=TIMEOUT) == -signal.SIGKILL
    wait_until(lambda: not alive(server))  # the fork server dies with its agent
    assert alive(supervisor_pid) and alive(pid)
    context = make_context(tmp_path / "job", gated_job(tmp_path))

    async def scenario() -> tuple[Status, Status]:
        runner = LocalProcessRunner()
        found = await runner.find(context)
        assert isinstance(found, LocalSubmittedRun) and found.pid == pid
        assert found.supervisor_pid == supervisor_pid
        again = await runner.run(context)  # must not start it a second time
        assert again.pid == pid
        running = await found.get_status()
        (tmp_path / "go").touch()
        return running, await asyncio.wait_for(found.wait(), TIMEOUT)

    running, ended = asyncio.run(scenario())
    assert running.state is RunState.RUNNING
    assert ended == Status(RunState.FAILED, exit_code=3)
    assert marker_lines(tmp_path) == ["started"]
    wait_until(lambda: not group_alive(pid))


def _cmdlines() -> list[bytes]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found.append(Path(f"/proc/{entry}/cmdline").read_bytes())
            except OSError:
                continue
    return found


def test_the_jobs_env_reaches_the_job_but_no_argv_and_not_the_server(tmp_path: Path) -> None:
    secret = "s3cret-" + os.urandom(8).hex()
    ready = tmp_path / "ready"
    context = make_context(
        tmp_path / "job",
        ["sh", "-c", f'echo "$TOKEN" > {tmp_path / "seen"}; touch {ready}; sleep 30'],
        env={"TOKEN": secret},
    )

    async def scenario() -> tuple[list[bytes], bytes, bytes, Status]:
        run = await LocalProcessRunner().run(context)
        await asyncio.to_thread(wait_until, ready.exists)
        cmdlines = _cmdlines()
        server_env = Path(f"/proc/{server_pid()}/environ").read_bytes()
        supervisor_args = Path(f"/proc/{run.supervisor_pid}/cmdline").read_bytes()
        await asyncio.wait_for(run.cancel(grace=TIMEOUT), TIMEOUT)
        return cmdlines, server_env, supervisor_args, await run.wait()

    cmdlines, server_env, supervisor_args, status = asyncio.run(scenario())
    assert (tmp_path / "seen").read_text().strip() == secret
    assert not [line for line in cmdlines if secret.encode() in line]
    assert secret.encode() not in server_env
    assert b"forkserver.py" in supervisor_args  # a fork: the server's argv, not the job's
    assert status.state is RunState.STOPPED
    logs = "".join(p.read_text() for p in (tmp_path / "job" / "supervisor").glob("*.log"))
    assert secret not in logs


def test_the_server_does_not_hold_the_agents_own_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAUNCH_AGENT_BACKEND_URL", "postgresql://agent:secret@db/queue")

    async def scenario() -> bytes:
        run = await LocalProcessRunner().run(make_context(tmp_path / "job", ["true"]))
        environ = Path(f"/proc/{server_pid()}/environ").read_bytes()
        await asyncio.wait_for(run.wait(), TIMEOUT)
        return environ

    assert b"secret" not in asyncio.run(scenario())


def test_switched_off_the_supervisor_is_started_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORK_SERVER_SWITCH, "0")
    context = make_context(tmp_path / "job", ["sh", "-c", "exit 5"])

    async def scenario() -> tuple[int, Status]:
        assert fork_server() is None
        run = await LocalProcessRunner().run(context)
        return parent_of(run.supervisor_pid), await asyncio.wait_for(run.wait(), TIMEOUT)

    parent, status = asyncio.run(scenario())
    assert parent == os.getpid()
    assert status == Status(RunState.FAILED, exit_code=5)


def test_the_chaos_orphan_check_sees_forked_supervisors(tmp_path: Path) -> None:
    """tests/chaos.py finds leftover supervisors by their command line: a fork carries the
    fork server's, so it is found by its working directory (its job folder) instead."""
    from tests.chaos import _supervisors_under

    async def scenario() -> tuple[list[str], Status]:
        run = await LocalProcessRunner().run(
            make_context(tmp_path / "job", gated_job(tmp_path, code=0))
        )
        seen = _supervisors_under(tmp_path)
        (tmp_path / "go").touch()
        return seen, await asyncio.wait_for(run.wait(), TIMEOUT)

    seen, status = asyncio.run(scenario())
    assert len(seen) == 1 and "forkserver.py" in seen[0]
    assert status.state is RunState.FINISHED
    assert _supervisors_under(tmp_path) == []
