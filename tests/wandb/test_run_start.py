"""W&B's run-start rules: a job whose run never appears, or stays `pending`, fails its item
after the grace period (asking again at 1, 2, 4 ... s); a run that appears late is fine."""

from __future__ import annotations

from pathlib import Path

from agent_lib.backends.base import Lease
from agent_lib.backends.wandb import RUN_INIT_MISSING, RUN_NOT_STARTED, WandbBackend
from agent_lib.spec import QueueItem
from agent_lib.states import ItemState, Phase
from tests.wandb.conftest import API_KEY, CLIENT_OPTIONS, ENTITY, agent_config, run_agent
from tests.wandb.jobs import PROJECT, wandb_job
from tests.wandb.server import FakeWandb


def pending_run(server: FakeWandb, run_id: str) -> None:
    """A sweep's run as W&B creates it before the agent launches it: state `pending`."""
    server.state.projects.add((ENTITY, PROJECT))
    server.state.runs[(ENTITY, PROJECT, run_id)] = {
        "id": f"run-{run_id}",
        "name": run_id,
        "state": "pending",
        "stopped": False,
    }


def test_a_run_that_stays_pending_fails_its_item(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    pending_run(server, "sweeprun1")
    item_id = server.push("default", wandb_job(register=False, run_id="sweeprun1"))

    agent = run_agent(backend, agent_config(tmp_path, exit_when_idle=True))

    failure = server.item(item_id)["failure"]
    assert agent.outcomes == {"finished": 1}  # the job itself exited 0 ...
    assert failure["stage"] == "run"  # ... but its run never really started
    assert failure["message"].startswith(RUN_INIT_MISSING)
    assert "stayed pending" in failure["message"]
    assert "filePaths" not in server.calls_of("failRunQueueItem")[-1].variables


def test_a_pending_run_that_the_job_starts_is_fine(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    pending_run(server, "sweeprun2")
    item_id = server.push("default", wandb_job(run_id="sweeprun2"))

    run_agent(backend, agent_config(tmp_path, exit_when_idle=True))

    assert server.item(item_id)["failure"] is None
    assert server.state.runs[(ENTITY, PROJECT, "sweeprun2")]["state"] == "running"


def test_a_run_that_appears_within_the_grace_period_is_fine(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    server.state.projects.add((ENTITY, PROJECT))
    server.state.late_runs[(ENTITY, PROJECT, "laterun1")] = 3  # seen at the third look
    item_id = server.push("default", wandb_job(register=False, run_id="laterun1"))

    run_agent(backend, agent_config(tmp_path, exit_when_idle=True))

    assert server.item(item_id)["failure"] is None
    assert len(server.calls_of("RunState")) == 3


def test_looks_for_the_run_on_wandbs_schedule(server: FakeWandb) -> None:
    """Defaults: 60 s grace, looks at 0, 1, 3, 7, 15, 31, 63 s, then the item fails."""
    backend = WandbBackend(server.base_url, API_KEY, entity=ENTITY, **CLIENT_OPTIONS)
    slept: list[float] = []
    backend._sleep = slept.append  # type: ignore[method-assign]
    item_id = server.push("default", wandb_job())
    lease = Lease(QueueItem(item_id, "default", {}), "agent", entity=ENTITY, project=PROJECT)

    backend.complete_run_queue_item(lease.claimed("ghost1"), ItemState.STOPPED)

    assert slept == [1, 2, 4, 8, 16, 32]
    assert len(server.calls_of("RunState")) == 7
    message = server.item(item_id)["failure"]["message"]
    assert message.startswith(RUN_NOT_STARTED)  # stopped, not finished: W&B's other message
    assert "never appeared" in message
    backend.close()


def test_fail_leaves_file_paths_out_when_there_are_none(
    server: FakeWandb, backend: WandbBackend
) -> None:
    item_id = server.push("default", wandb_job())
    lease = Lease(QueueItem(item_id, "default", {}), "agent")

    backend.fail_run_queue_item(lease, "no files", Phase.AGENT)
    backend.fail_run_queue_item(lease, "files", Phase.AGENT, ["/tmp/error.log"])

    without, with_files = server.calls_of("failRunQueueItem")
    assert "filePaths" not in without.variables  # as W&B's client sends it
    assert with_files.variables["filePaths"] == ["/tmp/error.log"]
