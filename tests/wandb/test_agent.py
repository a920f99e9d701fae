"""The real LaunchAgent serving a W&B queue: real local processes, the fake W&B server."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_lib.backends.wandb import RUN_INIT_MISSING, WandbBackend
from tests.wandb.conftest import API_KEY, ENTITY, agent_config, run_agent
from tests.wandb.jobs import PROJECT, py_spec, read_report, wandb_job
from tests.wandb.server import FakeWandb


def when(condition: Callable[[], bool], then: Callable[[], None], timeout: float = 30) -> None:
    """In the background: once `condition` holds, do `then` (what a person does in W&B)."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                then()
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def test_a_job_runs_end_to_end(server: FakeWandb, backend: WandbBackend, tmp_path: Path) -> None:
    report = tmp_path / "seen.json"
    item_id = server.push("default", wandb_job(report))
    server.inject("503", operation="popFromRunQueue")  # a blip on the way changes nothing

    agent = run_agent(backend, agent_config(tmp_path, exit_when_idle=True))

    seen = read_report(report)
    item = server.item(item_id)
    assert item["state"] == "CLAIMED"  # W&B shows the run's state from here on
    assert item["associatedRunId"] == seen["WANDB_RUN_ID"]
    assert item["failure"] is None
    assert (ENTITY, PROJECT, seen["WANDB_RUN_ID"]) in server.state.runs
    assert seen["WANDB_BASE_URL"] == server.base_url
    assert seen["WANDB_API_KEY"] == API_KEY
    assert seen["WANDB_LAUNCH_TRACE_ID"] == item_id
    assert seen["WANDB_LAUNCH_QUEUE_NAME"] == "default"
    assert API_KEY not in seen["cmdline"]
    assert agent.outcomes == {"finished": 1}
    ops = server.operations()
    assert ops[:4] == ["ProjectRunQueues", "createLaunchAgent", "EntityIsTeam", "LaunchAgent"]
    for op in ("popFromRunQueue", "ackRunQueueItem", "updateLaunchAgent", "RunState"):
        assert op in ops
    (agent_record,) = server.state.agents.values()
    assert agent_record["agentStatus"] == "KILLED"
    statuses = [c.variables["agentStatus"] for c in server.calls_of("updateLaunchAgent")]
    assert statuses[0] == "POLLING" and "RUNNING" in statuses and statuses[-1] == "KILLED"


def test_a_failing_job_fails_its_item_with_stage_and_message(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    item_id = server.push("default", wandb_job(exit_code=3))

    agent = run_agent(backend, agent_config(tmp_path, exit_when_idle=True))

    failure = server.item(item_id)["failure"]
    assert server.item(item_id)["state"] == "FAILED"
    assert failure["stage"] == "run"
    assert "exited with code 3" in failure["message"]
    (path,) = failure["filePaths"]
    assert path.endswith("error/error.log")
    assert "job output line" in Path(path).read_text()
    assert agent.outcomes == {"failed": 1}


def test_an_item_that_cannot_start_fails_in_stage_agent(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    item_id = server.push("default", py_spec("pass", resource="no-such-runner"))

    run_agent(backend, agent_config(tmp_path, exit_when_idle=True))

    failure = server.item(item_id)["failure"]
    assert failure["stage"] == "agent"
    assert "no-such-runner" in failure["message"]


def test_a_job_whose_run_never_reached_wandb_fails_as_wandbs_agent_does(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    item_id = server.push("default", wandb_job(register=False))

    run_agent(backend, agent_config(tmp_path, exit_when_idle=True))

    failure = server.item(item_id)["failure"]
    assert failure["stage"] == "run"
    assert failure["message"].startswith(RUN_INIT_MISSING)


def test_stop_polling_stops_the_agent_after_its_running_job(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    first = server.push("default", wandb_job(sleep=0.5))

    def ask_to_stop() -> None:
        (agent_id,) = server.state.agents
        server.set_agent(agent_id, stopPolling=True)
        server.push("default", wandb_job())

    when(lambda: server.item(first)["state"] == "CLAIMED", ask_to_stop)
    agent = run_agent(backend, agent_config(tmp_path))  # no exit_when_idle: only stopPolling

    assert agent.stop_reason is not None and "stopPolling" in agent.stop_reason
    assert agent.outcomes == {"finished": 1}
    pending = [i for i in server.state.items.values() if i["state"] == "PENDING"]
    assert len(pending) == 1  # pushed after the stop: left for another agent


def test_a_run_stopped_in_wandb_is_cancelled(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    item_id = server.push("default", wandb_job(sleep=60))

    def stop_run() -> None:
        run_id = server.item(item_id)["associatedRunId"]
        server.state.runs[(ENTITY, PROJECT, run_id)]["stopped"] = True

    def run_registered() -> bool:
        run_id = server.item(item_id)["associatedRunId"]
        return run_id is not None and (ENTITY, PROJECT, run_id) in server.state.runs

    when(run_registered, stop_run)
    started = time.monotonic()
    agent = run_agent(backend, agent_config(tmp_path, exit_when_idle=True, stopped_run_timeout=0))

    assert time.monotonic() - started < 30
    assert agent.outcomes == {"stopped": 1}
    assert server.item(item_id)["failure"] is None
    assert (
        server.calls_of("RunStoppedStatus")[-1].variables["runId"]
        == (server.item(item_id)["associatedRunId"])
    )


def test_sweep_state_decides_whether_a_sweep_run_launches(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path
) -> None:
    server.state.projects.add((ENTITY, PROJECT))
    server.state.sweeps[(ENTITY, PROJECT, "sw1")] = {
        "id": "U3dlZXA6MQ==",
        "name": "sw1",
        "state": "RUNNING",
    }
    server.state.sweeps[(ENTITY, PROJECT, "sw2")] = {
        "id": "U3dlZXA6Mg==",
        "name": "sw2",
        "state": "RUNNING",
    }
    backend.set_sweep_state("sw2", "CANCELED", ENTITY, PROJECT)
    runs = server.push("default", wandb_job(sweep_id="sw1"))
    cancelled = server.push("default", wandb_job(sweep_id="sw2"))

    agent = run_agent(backend, agent_config(tmp_path, exit_when_idle=True))

    assert server.calls_of("UpsertSweep")[0].variables["id"] == "U3dlZXA6Mg=="
    assert backend.get_sweep_state("sw1", ENTITY, PROJECT) == "RUNNING"
    assert server.item(runs)["failure"] is None
    assert "sweep sw2 is in state CANCELED" in server.item(cancelled)["failure"]["message"]
    assert agent.outcomes == {"finished": 1, "failed": 1}


def test_warnings_reach_the_item(server: FakeWandb, backend: WandbBackend) -> None:
    item_id = server.push("default", py_spec("pass"))
    assert backend.update_run_queue_item_warning(item_id, "pod pending", "Kubernetes", None)
    assert server.item(item_id)["warnings"] == [
        {"message": "pod pending", "stage": "Kubernetes", "filePaths": None}
    ]


def test_the_api_key_never_reaches_logs_or_command_lines(
    server: FakeWandb, backend: WandbBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    item_key = "wk-item-owned-key-7d1e55aa90c3"
    report = tmp_path / "seen.json"
    report_own = tmp_path / "seen-own.json"
    server.accept_key(item_key)
    failing = server.push("default", wandb_job(exit_code=1))
    server.push("default", wandb_job(report))
    server.push("default", wandb_job(report_own, _wandb_api_key=item_key))
    config = agent_config(tmp_path, exit_when_idle=True, verbosity=3)

    run_agent(backend, config)

    assert read_report(report)["WANDB_API_KEY"] == API_KEY
    assert read_report(report_own)["WANDB_API_KEY"] == item_key  # the item's key wins
    for seen in (read_report(report), read_report(report_own)):
        assert API_KEY not in seen["cmdline"] and item_key not in seen["cmdline"]
    for secret in (API_KEY, item_key):
        assert secret not in caplog.text
        assert secret not in str(server.item(failing)["failure"])
        for path in tmp_path.rglob("*"):
            if path.is_file() and path.suffix not in (".json",):
                assert secret not in path.read_text(errors="replace"), path
    assert "***" in caplog.text  # the item's spec was logged, its key masked
