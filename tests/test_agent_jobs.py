"""The agent running real local-process jobs from a real SQLite queue file."""

from __future__ import annotations

import json
from pathlib import Path

from agent_lib import ItemState, LaunchAgent
from agent_lib.backends import SqlBackend
from tests.helpers import (
    PYTHON,
    fast_config,
    max_overlap,
    py_job,
    read_records,
    record_job,
    run_agent,
    sh_job,
)


def test_items_run_end_to_end(backend: SqlBackend, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    ids = [backend.push_to_run_queue("default", record_job(log)) for _ in range(12)]

    agent = run_agent(backend, fast_config(tmp_path, max_jobs=4, exit_when_idle=True))

    starts = [item for kind, _, item, _, _ in read_records(log) if kind == "start"]
    assert sorted(starts) == sorted(ids)  # every item ran, each exactly once
    for item_id in ids:
        info = backend.get_item(item_id)
        assert info is not None
        assert info.state is ItemState.FINISHED
        assert info.exit_code == 0
        assert info.run_id and info.claimed_at and info.finished_at
    assert agent.outcomes == {"finished": 12}
    assert backend.get_launch_agent(agent.id).status == "KILLED"


def test_max_jobs_is_reached_and_never_exceeded(backend: SqlBackend, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    for _ in range(9):
        backend.push_to_run_queue("default", record_job(log, sleep=0.2, meet=3))

    run_agent(backend, fast_config(tmp_path, max_jobs=3, exit_when_idle=True))

    assert max_overlap(log) == 3


def test_unlimited_max_jobs_runs_everything_at_once(backend: SqlBackend, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    for _ in range(6):
        backend.push_to_run_queue("default", record_job(log, sleep=0.2, meet=6))

    run_agent(backend, fast_config(tmp_path, max_jobs=-1, exit_when_idle=True))

    assert max_overlap(log) == 6


def test_queues_are_served_round_robin(backend: SqlBackend, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    for _ in range(3):
        backend.push_to_run_queue("a", record_job(log))
        backend.push_to_run_queue("b", record_job(log))

    run_agent(backend, fast_config(tmp_path, queues=["a", "b"], exit_when_idle=True))

    order = [queue for kind, _, _, queue, _ in read_records(log) if kind == "start"]
    assert order == ["a", "b", "a", "b", "a", "b"]


def test_priority_then_fifo_within_a_queue(backend: SqlBackend, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    pushed = [(3, "low"), (2, "medium-1"), (0, "critical"), (2, "medium-2"), (1, "high")]
    for priority, tag in pushed:
        backend.push_to_run_queue("default", record_job(log, tag=tag), priority=priority)

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True))

    order = [tag for kind, _, _, _, tag in read_records(log) if kind == "start"]
    assert order == ["critical", "high", "medium-1", "medium-2", "low"]


def test_failing_job_is_failed_in_phase_run_with_log_tail(
    backend: SqlBackend, tmp_path: Path
) -> None:
    script = "for i in $(seq 1 150); do echo line-$i; done; echo 'boom: bad loss' >&2; exit 3"
    item_id = backend.push_to_run_queue("default", sh_job(script))

    agent = run_agent(backend, fast_config(tmp_path, exit_when_idle=True, log_tail_lines=20))

    info = backend.get_item(item_id)
    assert info is not None
    assert info.state is ItemState.FAILED
    assert info.failure_phase == "run"
    assert info.failure_message == "the job exited with code 3"
    [(path, tail)] = info.files.items()
    assert path.endswith("error/error.log")
    assert "boom: bad loss" in tail
    assert "line-150" in tail and "line-100" not in tail  # only the tail is kept
    assert agent.outcomes == {"failed": 1}


def test_malformed_items_fail_in_phase_agent_and_the_agent_goes_on(
    backend: SqlBackend, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    bad = {
        "args-not-a-list": {"overrides": {"entry_point": ["true"], "args": 5}},
        "unknown-resource": {"resource": "moon", "overrides": {"entry_point": ["true"]}},
        "nothing-to-run": {"resource": "local-process"},
        "not-a-command": {"overrides": {"entry_point": ["/no/such/binary"]}},
        "negative-resume": {"_resume_count": -1, "overrides": {"entry_point": ["true"]}},
    }
    ids = {name: backend.push_to_run_queue("default", spec) for name, spec in bad.items()}
    good = backend.push_to_run_queue("default", record_job(log))

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True))

    messages = {}
    for name, item_id in ids.items():
        info = backend.get_item(item_id)
        assert info is not None
        assert info.state is ItemState.FAILED, name
        assert info.failure_phase == "agent", name
        messages[name] = info.failure_message or ""
    assert "overrides.args" in messages["args-not-a-list"]
    assert "'moon' is not supported" in messages["unknown-resource"]
    assert "overrides.entry_point" in messages["nothing-to-run"]
    assert "command not found: '/no/such/binary'" in messages["not-a-command"]
    assert "_resume_count" in messages["negative-resume"]
    good_info = backend.get_item(good)
    assert good_info is not None and good_info.state is ItemState.FINISHED


def test_non_object_spec_fails_with_a_clear_message(backend: SqlBackend, tmp_path: Path) -> None:
    item_id = backend.push_to_run_queue("default", ["not", "a", "mapping"])  # type: ignore[arg-type]

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True))

    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FAILED
    assert info.failure_phase == "agent"
    assert (
        info.failure_message
        == "the item could not be read: run_spec must be a JSON object, not list"
    )


def test_job_sees_the_environment_contract(backend: SqlBackend, tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    code = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    spec = py_job(code) | {
        "entity": "team-ml",
        "project": "vision",
        "name": "resnet-lr-sweep",
        "sweep_id": "sw123",
        "run_id": "fixedrun1",
        "_resume_count": 1,
    }
    spec["overrides"]["run_config"] = {"lr": 0.01, "layers": [64, 64]}
    backend.set_sweep_state("sw123", "RUNNING", None, None)
    item_id = backend.push_to_run_queue("vision-queue", spec)

    run_agent(backend, fast_config(tmp_path, queues=["vision-queue"], exit_when_idle=True))

    env = json.loads(out.read_text())
    assert env["WANDB_RUN_ID"] == "fixedrun1"
    assert env["WANDB_LAUNCH"] == "True"
    assert env["WANDB_PROJECT"] == "vision"
    assert env["WANDB_ENTITY"] == "team-ml"
    assert env["WANDB_NAME"] == "resnet-lr-sweep"
    assert json.loads(env["WANDB_CONFIG"]) == {"lr": 0.01, "layers": [64, 64]}
    assert env["WANDB_SWEEP_ID"] == "sw123"
    assert env["WANDB_LAUNCH_QUEUE_NAME"] == "vision-queue"
    assert env["WANDB_LAUNCH_TRACE_ID"] == item_id
    assert env["WANDB_RESUME"] == "allow"
    info = backend.get_item(item_id)
    assert info is not None and info.run_id == "fixedrun1"


def test_fresh_run_is_not_marked_resumed_and_gets_a_new_run_id(
    backend: SqlBackend, tmp_path: Path
) -> None:
    out = tmp_path / "env.json"
    code = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    item_id = backend.push_to_run_queue("default", py_job(code))

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True))

    env = json.loads(out.read_text())
    assert "WANDB_RESUME" not in env
    assert "WANDB_SWEEP_ID" not in env
    info = backend.get_item(item_id)
    assert info is not None
    assert env["WANDB_RUN_ID"] == info.run_id
    assert len(env["WANDB_RUN_ID"]) == 8


def test_overrides_args_follow_the_entry_point(backend: SqlBackend, tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    code = f"import json, sys; json.dump(sys.argv[1:], open({str(out)!r}, 'w'))"
    spec = py_job(code)
    spec["overrides"]["args"] = ["--epochs", "3", "--name=x y"]
    backend.push_to_run_queue("default", spec)

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True))

    assert json.loads(out.read_text()) == ["--epochs", "3", "--name=x y"]


def test_secure_mode_refuses_entry_point_overrides_but_runs_named_jobs(
    backend: SqlBackend, tmp_path: Path
) -> None:
    out = tmp_path / "named.txt"
    jobs = {"train": {"entry_point": [PYTHON, "-c", f"open({str(out)!r}, 'w').write('ran')"]}}
    overridden = backend.push_to_run_queue("default", sh_job("echo pwned"))
    named = backend.push_to_run_queue("default", {"job": "train"})
    unknown = backend.push_to_run_queue("default", {"job": "mine-bitcoin"})

    run_agent(backend, fast_config(tmp_path, secure_mode=True, jobs=jobs, exit_when_idle=True))

    info = backend.get_item(overridden)
    assert info is not None and info.state is ItemState.FAILED
    assert info.failure_phase == "agent"
    assert "secure_mode: only named jobs run on this agent" in (info.failure_message or "")
    named_info = backend.get_item(named)
    assert named_info is not None and named_info.state is ItemState.FINISHED
    assert out.read_text() == "ran"
    unknown_info = backend.get_item(unknown)
    assert unknown_info is not None and unknown_info.state is ItemState.FAILED
    assert "'mine-bitcoin' is not one of this agent's jobs" in (unknown_info.failure_message or "")


def test_a_stop_request_cancels_the_running_job(backend: SqlBackend, tmp_path: Path) -> None:
    started = tmp_path / "started"
    item_id = backend.push_to_run_queue("default", sh_job(f"touch {started}; sleep 60"))
    config = fast_config(tmp_path, exit_when_idle=True, stopped_run_timeout=0.3)

    async def scenario() -> LaunchAgent:
        import asyncio

        agent = LaunchAgent(backend, config)
        loop_task = asyncio.create_task(agent.loop())
        while not started.exists():
            await asyncio.sleep(0.02)
        assert backend.cancel_run_queue_item(item_id) is ItemState.CLAIMED
        await asyncio.wait_for(loop_task, 30)
        return agent

    import asyncio

    agent = asyncio.run(scenario())

    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.STOPPED
    assert agent.outcomes == {"stopped": 1}


def test_cancelled_pending_item_never_runs(backend: SqlBackend, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    item_id = backend.push_to_run_queue("default", record_job(log))
    assert backend.cancel_run_queue_item(item_id) is ItemState.STOPPED

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True))

    assert not log.exists()


def test_sweep_that_ended_does_not_launch_its_runs(backend: SqlBackend, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    backend.set_sweep_state("done-sweep", "FINISHED", None, None)
    spec = record_job(log) | {"sweep_id": "done-sweep"}
    item_id = backend.push_to_run_queue("default", spec)

    run_agent(backend, fast_config(tmp_path, exit_when_idle=True))

    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FAILED
    assert info.failure_phase == "agent"
    assert "sweep done-sweep is in state FINISHED" in (info.failure_message or "")
    assert not log.exists()


def test_schedulers_over_max_schedulers_wait_their_turn(
    backend: SqlBackend, tmp_path: Path
) -> None:
    log = tmp_path / "jobs.log"
    for tag in ("sched-1", "sched-2"):
        scheduler = record_job(log, sleep=0.6, tag=tag) | {
            "uri": "placeholder-uri-scheduler",
            "job": "sweep-scheduler",
        }
        backend.push_to_run_queue("default", scheduler)
    backend.push_to_run_queue("default", record_job(log, tag="plain"))

    run_agent(
        backend,
        fast_config(tmp_path, max_schedulers=1, max_jobs=2, exit_when_idle=True, lease_seconds=30),
    )

    records = read_records(log)
    spans = {
        tag: (
            next(t for k, t, *_, g in records if k == "start" and g == tag),
            next(t for k, t, *_, g in records if k == "end" and g == tag),
        )
        for tag in ("sched-1", "sched-2", "plain")
    }
    assert spans["sched-2"][0] >= spans["sched-1"][1]  # never two schedulers at once
    assert spans["plain"][0] < spans["sched-1"][1]  # a plain job is not held up behind them
    assert {i.state for i in backend.list_items()} == {ItemState.FINISHED}


def test_handover_after_n_jobs(backend: SqlBackend, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    for _ in range(5):
        backend.push_to_run_queue("default", record_job(log))

    agent = run_agent(backend, fast_config(tmp_path, stop_after_jobs=2))

    assert agent.outcomes == {"finished": 2}
    states = sorted(i.state.value for i in backend.list_items())
    assert states == ["FINISHED", "FINISHED", "PENDING", "PENDING", "PENDING"]
