"""The agent as a Prefect flow, against a real Prefect server and a real SQLite queue.

Each test runs the `drain` or `launch-agent` flow in this process and reads back, through
the Prefect client, what a person would see in the UI.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prefect import State

from agent_lib.backends import SqlBackend
from agent_lib.states import ItemState
from flows import drain
from tests.flows.prefect_reads import (
    artifacts_keyed,
    artifacts_of,
    logs_of,
    subflow_runs,
    task_runs_of,
)
from tests.helpers import max_overlap, record_job, sh_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

STEPS = ["validate", "ack", "check sweep", "build", "launch", "wait"]
OK_STEPS = [*STEPS, "settle"]


def run_drain(params: dict[str, Any], **more: Any) -> State[Any]:
    state: State[Any] = asyncio.run(drain(**params, **more, return_state=True))  # type: ignore[arg-type]
    return state


async def wait_for_logs(flow_run_id: Any, text: str, timeout: float = 20) -> list[str]:
    """Logs reach the API in batches (every ~2 s): wait for the one we look for."""
    deadline = time.monotonic() + timeout
    while True:
        messages = [log.message for log in await logs_of(flow_run_id)]
        if any(text in m for m in messages) or time.monotonic() > deadline:
            return messages
        await asyncio.sleep(0.5)


def test_each_item_is_a_linked_subflow_whose_steps_are_task_runs(
    backend: SqlBackend, flow_settings: dict[str, Any]
) -> None:
    ok = [backend.push_to_run_queue("q1", sh_job(f"echo hello from job {i}")) for i in range(2)]
    bad = backend.push_to_run_queue("q1", sh_job("echo about to fail; exit 3"))

    state = run_drain(flow_settings, queues=["q1"], max_jobs=2)

    assert state.is_completed(), state
    assert "2 finished" in (state.message or "") and "1 failed" in (state.message or "")
    parent_id = state.state_details.flow_run_id
    assert parent_id is not None
    runs = asyncio.run(subflow_runs(parent_id))
    by_item = {run.parameters["item_id"]: run for run in runs}
    assert sorted(by_item) == sorted([*ok, bad]), "one task_run_job subflow run per item"
    for item_id, run in by_item.items():
        assert run.name.startswith(f"q1/{item_id}: sh -c echo"), run.name  # a person finds it
        assert run.parameters["queue"] == "q1"

    for item_id in ok:
        run = by_item[item_id]
        assert run.state is not None and run.state.is_completed()
        tasks = asyncio.run(task_runs_of(run.id))
        assert sorted(t.name for t in tasks) == sorted(OK_STEPS)
        assert all(t.state is not None and t.state.is_completed() for t in tasks)
        assert backend.get_item(item_id).state is ItemState.FINISHED  # type: ignore[union-attr]
        logs = asyncio.run(wait_for_logs(run.id, "hello from job"))
        assert any(f"| hello from job {ok.index(item_id)}" in m for m in logs), logs

    failed = by_item[bad]
    assert failed.state is not None and failed.state.is_failed()
    assert failed.state.message == "failed in phase run: the job exited with code 3"
    steps = {t.name: t for t in asyncio.run(task_runs_of(failed.id))}
    assert sorted(steps) == sorted([*STEPS, "report failure"])
    assert steps["wait"].state is not None and steps["wait"].state.is_completed()
    assert steps["wait"].run_count == 1, "a user's failing job is never retried"
    assert steps["report failure"].run_count == 1  # fail_run_queue_item: once
    info = backend.get_item(bad)
    assert info is not None and info.state is ItemState.FAILED
    assert info.failure_phase == "run"
    assert info.failure_message == "the job exited with code 3"
    assert any("about to fail" in text for text in info.files.values()), info.files

    artifact = asyncio.run(artifacts_of(failed.id))[0]
    for text in (bad, "exit code** | 3", "failed in phase** | run", "sh -c echo about"):
        assert text in str(artifact.data), artifact.data
    status = asyncio.run(artifacts_keyed(_status_key(backend)))
    assert status and "2 finished" in str(status[0].data) and "1 failed" in str(status[0].data)


def test_a_job_that_cannot_start_fails_its_subflow_in_phase_agent(
    backend: SqlBackend, flow_settings: dict[str, Any]
) -> None:
    item = backend.push_to_run_queue("q2", {**sh_job("true"), "resource": "no-such-runner"})

    state = run_drain(flow_settings, queues=["q2"])

    assert state.is_completed(), "a failed job never fails the agent"
    (run,) = asyncio.run(subflow_runs(state.state_details.flow_run_id))  # type: ignore[arg-type]
    assert run.state is not None and run.state.is_failed()
    assert run.state.message is not None and run.state.message.startswith("failed in phase agent")
    info = backend.get_item(item)
    assert info is not None and info.state is ItemState.FAILED and info.failure_phase == "agent"


def test_jobs_overlap_up_to_max_jobs_and_never_beyond(
    backend: SqlBackend, flow_settings: dict[str, Any], tmp_path: Path
) -> None:
    log = tmp_path / "records.log"
    items = [backend.push_to_run_queue("q3", record_job(log, sleep=1.0, meet=2)) for _ in range(6)]

    state = run_drain(flow_settings, queues=["q3"], max_jobs=3)

    assert state.is_completed(), state
    peak = max_overlap(log)
    assert 2 <= peak <= 3, f"at most max_jobs=3 jobs at once, and they did overlap (peak {peak})"
    runs = asyncio.run(subflow_runs(state.state_details.flow_run_id))  # type: ignore[arg-type]
    assert len(runs) == len(items)
    assert all(r.state is not None and r.state.is_completed() for r in runs)


def test_a_prefect_error_creating_a_subflow_never_loses_the_job(
    backend: SqlBackend, flow_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like a SQLite-backed server answering 503 after the client's retries."""
    from prefect.client.orchestration import PrefectClient

    real = PrefectClient.create_flow_run
    calls = {"n": 0}

    async def flaky(self: PrefectClient, flow: Any, *args: Any, **kwargs: Any) -> Any:
        if flow.name == "task_run_job":
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("503 Service Unavailable (simulated)")
        return await real(self, flow, *args, **kwargs)

    monkeypatch.setattr(PrefectClient, "create_flow_run", flaky)
    items = [backend.push_to_run_queue("q4", sh_job("echo ok")) for _ in range(3)]

    state = run_drain(flow_settings, queues=["q4"], max_jobs=3)

    assert state.is_completed(), state
    assert "1 Prefect error(s) worked around" in (state.message or "")
    assert all(backend.get_item(i).state is ItemState.FINISHED for i in items)  # type: ignore[union-attr]
    runs = asyncio.run(subflow_runs(state.state_details.flow_run_id))  # type: ignore[arg-type]
    assert len(runs) == 2, "the other jobs kept their subflow runs"


def _status_key(backend: SqlBackend) -> str:
    from flows.artifacts import status_key

    (agent,) = backend.list_agents()
    return status_key(agent.name)
