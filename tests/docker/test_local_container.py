"""The local-container runner on a real Docker engine, driven by a real agent."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from agent_lib import LaunchAgent
from agent_lib.errors import SpecError
from agent_lib.runners.local_container import container_run_args
from agent_lib.states import ItemState
from tests.docker.conftest import Harness, sh

pytestmark = pytest.mark.timeout(120)

SECRET = "sk-test-0123456789abcdefghijklmnop"


# -- resource_args allow-list (no engine needed) --
def test_resource_args_are_translated_for_the_sdk() -> None:
    args = container_run_args(
        {
            "cpus": 1.5,
            "cpuset": "0",
            "memory": "64m",
            "shm_size": "1g",
            "gpus": "all",
            "env": ["A=1", "B=x=y"],
            "workdir": "/tmp",
            "ulimit": {"nofile": "1024:2048"},
            "pids-limit": 50,
            "labels": {"team": "ml"},
            "user": "nobody",
            "network": "none",
        }
    )
    kw = args.kwargs
    assert kw["nano_cpus"] == 1_500_000_000
    assert kw["cpuset_cpus"] == "0"
    assert kw["mem_limit"] == 64 * 1024 * 1024
    assert kw["shm_size"] == 1024**3
    assert kw["device_requests"][0]["Count"] == -1
    assert kw["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert kw["working_dir"] == "/tmp"
    assert (kw["ulimits"][0]["Soft"], kw["ulimits"][0]["Hard"]) == (1024, 2048)
    assert kw["pids_limit"] == 50
    assert kw["user"] == "nobody"
    assert kw["network_mode"] == "none"
    assert args.env == {"A": "1", "B": "x=y"}
    assert args.labels == {"team": "ml"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("privileged", True),
        ("network", "host"),
        ("volume", ["/:/host"]),
        ("device", ["/dev/sda"]),
        ("cap-add", ["SYS_ADMIN"]),
        ("pid", "host"),
    ],
)
def test_host_reaching_args_are_refused_unless_allowed(key: str, value: Any) -> None:
    with pytest.raises(SpecError) as refused:
        container_run_args({key: value})
    message = str(refused.value)
    assert f'["{key}"]' in message and "container_allow" in message
    allowed = container_run_args({key: value}, allow=[key])
    assert allowed.kwargs


def test_unknown_and_agent_owned_keys_are_refused() -> None:
    with pytest.raises(SpecError, match=r'\["mystery"\]: unknown key'):
        container_run_args({"mystery": 1})
    with pytest.raises(SpecError, match="are the agent's"):
        container_run_args({"labels": {"launch-agent.item": "1"}})
    with pytest.raises(SpecError, match=r'\["memory"\]: not a size'):
        container_run_args({"memory": "lots"})


# -- on the engine --
def test_job_sees_env_contract_and_overrides(harness: Harness, busybox: str) -> None:
    script = (
        'echo "RUN=$WANDB_RUN_ID LAUNCH=$WANDB_LAUNCH Q=$WANDB_LAUNCH_QUEUE_NAME '
        'TRACE=$WANDB_LAUNCH_TRACE_ID NAME=$WANDB_NAME PROJECT=$WANDB_PROJECT"; '
        'echo "CFG=$WANDB_CONFIG"; echo "EXTRA=$EXTRA PWD=$(pwd) USER=$(id -u)"; '
        'echo "KEYLEN=${#WANDB_API_KEY}"; echo "ARGS=$*"'
    )
    spec = sh(
        busybox,
        script,
        name="env-check",
        project="proj",
        run_id="envrun01",
        _wandb_api_key=SECRET,
        resource_args={
            "local-container": {
                "env": {"EXTRA": "from-resource-args", "WANDB_RUN_ID": "not-this"},
                "workdir": "/tmp",
                "user": "65534",
                "labels": {"team": "ml"},
                "memory": "64m",
                "cpus": 0.5,
                "pids-limit": 64,
            }
        },
    )
    spec["overrides"]["entry_point"].append("prog")
    spec["overrides"]["args"] = ["--lr", "0.1"]
    spec["overrides"]["run_config"] = {"lr": 0.1}
    job = harness.push(spec)
    args_only = harness.push(
        {"docker": {"docker_image": busybox}, "overrides": {"args": ["echo", "args-only"]}}
    )
    harness.run(remove_containers=False)

    assert harness.item(job).state is ItemState.FINISHED, harness.item(job)
    out = harness.output(job)
    assert f"RUN=envrun01 LAUNCH=True Q={harness.queue} TRACE={job} NAME=env-check" in out
    assert "PROJECT=proj" in out
    assert 'CFG={"lr": 0.1}' in out
    assert "EXTRA=from-resource-args PWD=/tmp USER=65534" in out
    assert f"KEYLEN={len(SECRET)}" in out and SECRET not in out
    assert "ARGS=--lr 0.1" in out
    assert harness.item(args_only).state is ItemState.FINISHED
    assert "args-only" in harness.output(args_only)

    (container,) = harness.containers(item=job)
    config, host = container.attrs["Config"], container.attrs["HostConfig"]
    assert config["Labels"]["launch-agent.run"] == "envrun01"
    assert config["Labels"]["launch-agent.item"] == job
    assert config["Labels"]["team"] == "ml"
    assert config["Entrypoint"] == ["sh"] and config["Cmd"][-2:] == ["--lr", "0.1"]
    assert f"WANDB_API_KEY={SECRET}" in config["Env"]
    visible = json.dumps([config["Entrypoint"], config["Cmd"], config["Labels"]])
    assert SECRET not in visible
    assert host["Memory"] == 64 * 1024 * 1024 and host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64


def test_exit_codes_out_of_memory_and_logs_kept(harness: Harness, busybox: str) -> None:
    ok = harness.push(sh(busybox, "echo all good"))
    failing = harness.push(sh(busybox, "echo about to fail >&2; exit 3"))
    hog = harness.push(
        sh(
            busybox,
            "echo filling memory; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
            resource_args={"local-container": {"memory": "16m", "memory-swap": "16m"}},
        )
    )
    harness.run()

    assert harness.item(ok).state is ItemState.FINISHED
    assert harness.item(ok).exit_code == 0
    fail = harness.item(failing)
    assert fail.state is ItemState.FAILED and fail.failure_phase == "run"
    assert "exited with code 3" in (fail.failure_message or "")
    assert "about to fail" in "".join(fail.files.values())
    oom = harness.item(hog)
    assert oom.state is ItemState.FAILED and oom.failure_phase == "run"
    assert "out of memory (limit 16 MiB)" in (oom.failure_message or ""), oom.failure_message
    # Logs are kept in the job folder, and the finished containers are gone: the agent
    # removes each (the run's cleanup()) once its item's outcome is recorded.
    assert "all good" in harness.output(ok)
    assert "about to fail" in harness.output(failing)
    assert "filling memory" in harness.output(hog)
    assert harness.containers() == []


def test_disallowed_resource_args_are_refused_before_anything_runs(
    harness: Harness, busybox: str
) -> None:
    privileged = harness.push(
        sh(busybox, "echo ran", resource_args={"local-container": {"privileged": True}})
    )
    host_net = harness.push(
        sh(busybox, "echo ran", resource_args={"local-container": {"network": "host"}})
    )
    harness.run()

    for item_id, key in ((privileged, "privileged"), (host_net, "network")):
        info = harness.item(item_id)
        assert info.state is ItemState.FAILED and info.failure_phase == "agent"
        assert f'["{key}"] is not allowed' in (info.failure_message or "")
        assert "container_allow" in (info.failure_message or "")
    assert harness.containers() == []


def test_cancel_stops_a_job_that_prints_nothing(harness: Harness, busybox: str) -> None:
    # `sleep` as PID 1 ignores SIGTERM: the stop must end in a kill after the grace.
    silent = harness.push(sh(busybox, "exec sleep 600"))

    async def scenario() -> float:
        agent = LaunchAgent(
            harness.db, harness.agent_config(exit_when_idle=False, stopped_run_timeout=0)
        )
        loop_task = asyncio.create_task(agent.loop())
        try:
            while not [c for c in harness.containers(item=silent) if c.status == "running"]:
                await asyncio.sleep(0.1)
            asked = time.monotonic()
            harness.db.cancel_run_queue_item(silent)
            while harness.item(silent).state is ItemState.CLAIMED:
                await asyncio.sleep(0.1)
            return time.monotonic() - asked
        finally:
            agent.stop()
            await asyncio.wait_for(loop_task, 30)

    took = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert harness.item(silent).state is ItemState.STOPPED
    assert took < 60
    assert harness.containers() == []  # removed by cleanup() once the item is settled
