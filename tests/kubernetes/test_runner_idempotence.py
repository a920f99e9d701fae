"""`run` and `find` are idempotent per job; what a crash can leave behind is taken in stride.

The runner driven directly (as a restarted agent's Job would drive it) against the fake
API server, plus an agent for the start timeout and a broken kubeconfig."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent_lib.errors import LaunchError
from agent_lib.runners.base import LaunchContext
from agent_lib.runners.kubernetes import manifest
from agent_lib.runners.kubernetes.runner import KubernetesRunner
from agent_lib.spec import LaunchSpec
from agent_lib.states import ItemState, RunState
from tests.kubernetes.conftest import NAMESPACE, Harness, job_spec
from tests.kubernetes.test_kubernetes_runner import assert_role_allows

pytestmark = pytest.mark.timeout(120)


def context_for(
    harness: Harness,
    item_id: str,
    run_id: str,
    image: str,
    script: str,
    resource_args: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> LaunchContext:
    command = ["sh", "-c", script]
    spec = LaunchSpec.parse(job_spec(image, script))
    job_dir = harness.data_dir / "jobs" / f"{item_id}-{run_id}"
    return LaunchContext(
        item_id=item_id,
        queue=harness.queue,
        run_id=run_id,
        spec=spec,
        command=command,
        image=image,
        env=env or {},
        job_dir=job_dir,
        log_path=job_dir / "output.log",
        resource_args=resource_args or {},
        labels={
            "launch-agent.agent": "tester",
            "launch-agent.queue": harness.queue,
            "launch-agent.item": item_id,
            "launch-agent.run": run_id,
        },
    )


def test_run_twice_and_find_give_one_job_and_a_leftover_secret_is_refreshed(
    harness: Harness, busybox: str
) -> None:
    key = "sk-new-key-0123456789abcdef"
    context = context_for(
        harness, "7", "idem01", busybox, 'echo "key $WANDB_API_KEY"', env={"WANDB_API_KEY": key}
    )
    other = context_for(
        harness,
        "8",
        "idem02",
        busybox,
        'echo "other $WANDB_API_KEY"',
        resource_args={"metadata": {"name": "shared"}},
        env={"WANDB_API_KEY": "sk-other-item-key-0123456"},
    )
    clash = context_for(
        harness,
        "9",
        "idem03",
        busybox,
        "echo clash",
        resource_args={"metadata": {"name": "shared"}},
        env={"WANDB_API_KEY": "sk-clashing-item-key-98765"},
    )
    runner = KubernetesRunner(harness.agent_config())
    # An earlier attempt died after creating the job's Secret, before its Job.
    labels, annotations = manifest.agent_labels(context.labels)
    leftover = manifest.build_secret(
        runner_secret(harness, context),
        NAMESPACE,
        {"WANDB_API_KEY": "sk-stale-key-000000000000"},
        labels,
        annotations,
    )
    code, body = harness.kube.post(f"/api/v1/namespaces/{NAMESPACE}/secrets", leftover)
    assert code == 201, body

    async def scenario() -> None:
        first = await runner.run(context)
        second = await runner.run(context)
        found = await runner.find(context)
        assert found is not None and first.id == second.id == found.id
        status = await first.wait()
        assert status.state is RunState.FINISHED and status.exit_code == 0
        assert await second.wait() == status
        assert await found.get_status() == status
        assert (await first.get_logs()).strip() == f"key {key}"

        shared = await runner.run(other)
        with pytest.raises(LaunchError, match=r"already exists.*not this item's"):
            await runner.run(clash)  # its Secret's name is taken: nothing of it is created
        assert await runner.find(clash) is None  # another item's Job is never adopted
        assert (await shared.wait()).state is RunState.FINISHED
        # The other item's Secret still holds the other item's key.
        assert (await shared.get_logs()).strip() == "other sk-other-item-key-0123456"
        for run in (first, shared):
            await run.cleanup()
        assert await runner.find(context) is None

    asyncio.run(scenario())
    creates = [r for r in harness.kube.requests if r.method == "POST" and r.path.endswith("/jobs")]
    assert len(creates) == 3  # job, its repeat (409, adopted), other; clash: none
    on_leftover = [
        r.method
        for r in harness.kube.requests
        if r.path.endswith("/secrets/" + leftover["metadata"]["name"])
    ]
    assert on_leftover[:2] == ["GET", "PUT"]  # found to be this job's, then refreshed
    replaced = [r for r in harness.kube.requests if r.method == "PUT"]
    assert all("sk-other-item-key" not in str(r.body) for r in replaced)
    assert all(not r.path.endswith("/shared-env") for r in replaced)
    assert harness.kube.rejected == [] and harness.kube.errors == []
    assert harness.kube.objects("jobs") == [] and harness.kube.objects("secrets") == []
    assert_role_allows(harness)


def runner_secret(harness: Harness, context: LaunchContext) -> str:
    name = manifest.job_name(harness.data_dir / "jobs", context.item_id, context.run_id)
    return manifest.secret_name(name)


def test_a_pod_that_never_starts_fails_at_start_timeout(harness: Harness, busybox: str) -> None:
    # Its env names a Secret that does not exist: the kubelet holds it in
    # CreateContainerConfigError (not fatal: the Secret may yet come), pending.
    stuck = harness.push(
        job_spec(
            busybox,
            "echo never",
            resource_args={
                "kubernetes": {
                    "spec": {
                        "template": {
                            "spec": {
                                "containers": [
                                    {
                                        "env": [
                                            {
                                                "name": "DB_URL",
                                                "valueFrom": {
                                                    "secretKeyRef": {"name": "absent", "key": "url"}
                                                },
                                            }
                                        ]
                                    }
                                ]
                            }
                        }
                    }
                }
            },
        )
    )
    harness.run(start_timeout=1.5)
    info = harness.item(stuck)
    assert info.state is ItemState.FAILED and info.failure_phase == "run"
    assert "did not start within 1.5 s" in (info.failure_message or ""), info.failure_message
    assert harness.kube.objects("jobs") == [] and harness.kube.objects("pods") == []


def test_a_kubeconfig_that_cannot_be_loaded_fails_the_item_saying_what_to_set(
    harness: Harness, busybox: str, tmp_path: Path
) -> None:
    item_id = harness.push(job_spec(busybox, "echo never"))
    harness.run(kube_config=tmp_path / "missing-kubeconfig")
    info = harness.item(item_id)
    assert info.state is ItemState.FAILED and info.failure_phase == "agent"
    message = info.failure_message or ""
    assert "cannot load the Kubernetes config" in message and "kube_config" in message, message
    assert harness.kube.requests == []


def test_the_agent_s_context_picks_the_cluster_and_the_default_namespace(
    harness: Harness, busybox: str, tmp_path: Path
) -> None:
    config = json.loads(harness.kubeconfig.read_text())
    config["clusters"].append({"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}})
    config["contexts"] = [
        {"name": "elsewhere", "context": {"cluster": "gone", "user": "tester", "namespace": "x"}},
        {"name": "team", "context": {"cluster": "fake", "user": "tester", "namespace": "team-ns"}},
    ]
    config["current-context"] = "elsewhere"
    kubeconfig = tmp_path / "two-contexts"
    kubeconfig.write_text(json.dumps(config))
    default_ns = harness.push(job_spec(busybox, "echo in the context namespace"))
    chosen_ns = harness.push(
        job_spec(
            busybox, "echo in my namespace", resource_args={"kubernetes": {"namespace": "mine"}}
        )
    )
    harness.run(kube_config=kubeconfig, kube_context="team")
    assert harness.item(default_ns).state is ItemState.FINISHED
    assert harness.item(chosen_ns).state is ItemState.FINISHED
    creates = [
        r.path for r in harness.kube.requests if r.method == "POST" and r.path.endswith("/jobs")
    ]
    assert sorted(creates) == [
        "/apis/batch/v1/namespaces/mine/jobs",
        "/apis/batch/v1/namespaces/team-ns/jobs",
    ]
    agent_ns = harness.push(job_spec(busybox, "echo in the agent namespace"))
    harness.run(kube_namespace="agent-ns", kube_config=kubeconfig, kube_context="team")
    assert harness.item(agent_ns).state is ItemState.FINISHED
    assert any(r.path == "/apis/batch/v1/namespaces/agent-ns/jobs" for r in harness.kube.requests)
