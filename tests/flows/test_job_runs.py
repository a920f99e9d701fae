"""What a person reads of one job in the Prefect UI: its subflow run's state, logs, artifact,
tags and parameters, and the agent's status artifact, against a real Prefect server.

One `drain` run (four jobs: one exits 3, one names no runner, one has nothing to run, one
finishes) is shared by the tests that read it back, so the suite pays for the agent once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import FlowRun, Log

from agent_lib.backends import SqlBackend, open_backend
from agent_lib.identity import default_name
from flows.artifacts import status_key
from tests.flows.prefect_reads import artifacts_keyed, artifacts_of, logs_of, subflow_runs
from tests.flows.test_agent_flow import run_drain
from tests.helpers import sh_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

SECRET = "s3cret-key-value-4242"
FAILING = "echo to stdout; echo to stderr >&2; exit 3"


@dataclass
class Drained:
    backend: SqlBackend
    runs: dict[str, FlowRun]  # by role: failed, not_started, no_command, finished
    items: dict[str, str]


@pytest.fixture(scope="module")
def drained(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drained]:
    tmp = tmp_path_factory.mktemp("job-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp / "xdg-config"))
        mp.setenv("XDG_DATA_HOME", str(tmp / "xdg-data"))
        for name in ("LAUNCH_AGENT_CONFIG", "LAUNCH_AGENT_BACKEND_URL", "DATABASE_URL"):
            mp.delenv(name, raising=False)
        backend = open_backend(f"sqlite:///{tmp / 'queue.db'}")
        assert isinstance(backend, SqlBackend)
        items = {
            "failed": backend.push_to_run_queue("jr", sh_job(FAILING)),
            "not_started": backend.push_to_run_queue(
                "jr", {**sh_job("true"), "resource": "no-such-runner"}
            ),
            # fails in the launch step, which has retries (on transient errors only)
            "no_command": backend.push_to_run_queue("jr", {"resource": "local-process"}),
            "finished": backend.push_to_run_queue(
                "jr",
                {
                    **sh_job("echo line one; echo line two"),
                    "entity": "team",
                    "project": "vision",
                    "_wandb_api_key": SECRET,
                },
            ),
        }
        state = run_drain(_settings(tmp / "data", backend_url=str(backend.url)), queues=["jr"])
        assert state.is_completed(), state
        parent = state.state_details.flow_run_id
        assert parent is not None
        by_item = {r.parameters["item_id"]: r for r in asyncio.run(subflow_runs(parent))}
        runs = {role: by_item[item] for role, item in items.items()}
        try:
            yield Drained(backend, runs, items)
        finally:
            backend.close()


def _settings(data_dir: Path, backend_url: str) -> dict[str, Any]:
    return {
        "backend_url": backend_url,
        "status_seconds": 1.0,
        "settings": {
            "data_dir": str(data_dir),
            "poll_interval": 0.05,
            "heartbeat_interval": 0.2,
            "stop_check_interval": 0.2,
            "cancel_grace": 2.0,
        },
    }


def all_logs(run: FlowRun, timeout: float = 30) -> list[Log]:
    """The run's logs once its last one ("Finished in state ...") reached the server."""
    deadline = time.monotonic() + timeout
    while True:
        logs = asyncio.run(logs_of(run.id))
        done = any(
            log.task_run_id is None and log.message.startswith("Finished in state") for log in logs
        )
        if done or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def test_a_failed_job_says_phase_message_and_exit_code(drained: Drained) -> None:
    run = drained.runs["failed"]
    assert run.state is not None and run.state.is_failed()
    assert run.state.message == "failed in phase run: the job exited with code 3"

    logs = all_logs(run)
    errors = [log.message for log in logs if log.level >= 40]
    assert errors, [log.message for log in logs]
    first, *tail_block = errors[0].splitlines()
    assert first == "failed in phase run: the job exited with code 3", errors[0]
    label = "last 2 lines of the job's output (stderr lines marked [stderr]):"
    assert tail_block == [label, "| to stdout", "| [stderr] to stderr"], errors[0]
    streamed = [log.message for log in logs if log.message.startswith("| ")]
    assert streamed == ["| to stdout", "| [stderr] to stderr"], (
        "each output line, once, as '| <line>'"
    )


def test_a_job_that_merely_failed_shows_no_traceback(drained: Drained) -> None:
    for role in ("failed", "not_started", "no_command"):
        logs = all_logs(drained.runs[role])
        assert logs
        assert not [log.message for log in logs if "Traceback" in log.message], role

    for role, start in (
        ("not_started", "failed in phase agent: resource 'no-such-runner'"),
        ("no_command", "failed in phase agent: nothing to run"),
    ):
        run = drained.runs[role]
        assert run.state is not None and run.state.message is not None
        assert run.state.message.startswith(start), run.state.message
        logs = all_logs(run)
        errors = [log.message for log in logs if log.level >= 40]
        assert errors and errors[0] == run.state.message, errors
        # The failed step still says why (as a warning), without the agent's internals.
        steps = [log.message for log in logs if log.task_run_id is not None and log.level >= 30]
        assert any("SpecError" in message for message in steps), steps


def test_the_job_artifact_shows_the_log_tail_and_how_long_the_job_ran(drained: Drained) -> None:
    (failed,) = asyncio.run(artifacts_of(drained.runs["failed"].id))
    text = str(failed.data)
    assert "Last 2 lines of the job's output (stderr lines marked [stderr])" in text, text
    assert "```text\nto stdout\n[stderr] to stderr\n```" in text, text
    assert "exit code** | 3" in text
    duration = _duration(text)
    assert 0.0 <= duration < 10.0, "from the job's launch to its end, not the agent's wait"

    (finished,) = asyncio.run(artifacts_of(drained.runs["finished"].id))
    assert "line one\nline two" in str(finished.data)
    assert _duration(str(finished.data)) < 10.0

    (not_started,) = asyncio.run(artifacts_of(drained.runs["not_started"].id))
    text = str(not_started.data)
    assert "duration** | - (not launched)" in text
    assert "Traceback" not in text and "not launched" in text


def _duration(markdown: str) -> float:
    line = next(row for row in markdown.splitlines() if row.startswith("| **duration** |"))
    return float(line.split("|")[2].strip().removesuffix(" s"))


def test_job_runs_carry_tags_and_the_redacted_spec_as_parameters(drained: Drained) -> None:
    finished = drained.runs["finished"]
    assert set(finished.tags) >= {
        "launch-agent",
        "queue:jr",
        "resource:local-process",
        "project:team/vision",
    }, finished.tags
    params = finished.parameters
    assert params["queue"] == "jr" and params["item_id"] == drained.items["finished"]
    spec = params["spec"]
    assert spec["project"] == "vision" and spec["overrides"]["entry_point"][0] == "sh"
    assert spec["_wandb_api_key"] == "***"
    assert SECRET not in json.dumps(params)

    failed = drained.runs["failed"]
    assert {"launch-agent", "queue:jr", "resource:local-process"} <= set(failed.tags)
    assert not any(tag.startswith("project:") for tag in failed.tags), "no project: no tag"
    # Known before the spec is validated: the queue, the agent, the spec as submitted.
    not_started = drained.runs["not_started"]
    assert {"launch-agent", "queue:jr"} <= set(not_started.tags)
    assert not_started.parameters["spec"]["resource"] == "no-such-runner"


def test_two_agent_runs_on_one_data_dir_write_one_status_artifact(
    backend: SqlBackend, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    settings = _settings(data_dir, str(backend.url))
    key = status_key(default_name(data_dir))  # the agent's stable identity, not its start
    parents = []
    for n in range(2):
        backend.push_to_run_queue("sk", sh_job(f"echo start {n}"))
        state = run_drain(settings, queues=["sk"])
        assert state.is_completed(), state
        parents.append(state.state_details.flow_run_id)

    versions = asyncio.run(artifacts_keyed(key))
    assert {a.flow_run_id for a in versions} == set(parents), (key, versions)
    latest = versions[0]  # UPDATED_DESC
    assert latest.flow_run_id == parents[-1] and "1 finished" in str(latest.data)
