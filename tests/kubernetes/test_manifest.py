"""The Job an item becomes, what an item may not put in it, and how pod states read.

No cluster and no engine: pure functions, and the official schema (kubernetes-validate)
for the manifests they build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent_lib import AgentConfig
from agent_lib.errors import SpecError
from agent_lib.job import check_secure
from agent_lib.runners.kubernetes import manifest as m
from agent_lib.runners.kubernetes import status as s
from agent_lib.spec import LaunchSpec
from agent_lib.states import RunState
from tests.kubernetes.schema import problems

LABELS = {
    "launch-agent.agent": "host-1 (gpu)",
    "launch-agent.queue": "team queue",
    "launch-agent.item": "42",
    "launch-agent.run": "abc123",
}
ENV = {"WANDB_RUN_ID": "abc123", "WANDB_API_KEY": "sk-secret-value-123", "OTHER": "x"}


def build(resource_args: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    labels, annotations = m.agent_labels(LABELS)
    values: dict[str, Any] = {
        "name": "la-1234-42-abc123",
        "namespace": "jobs",
        "image": "trainer:1",
        "command": ["python", "train.py", "--lr", "0.1"],
        "args_only": False,
        "env": ENV,
        "labels": labels,
        "annotations": annotations,
        "run_id": "abc123",
        "secret": "la-1234-42-abc123-env",
    }
    values.update(overrides)
    return m.build_job(resource_args, **values)


W_AND_B_MANIFEST = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "namespace": "ignored-shortcut",
    "metadata": {"namespace": "ml", "labels": {"team": "vision"}, "generateName": "x-"},
    "spec": {
        "activeDeadlineSeconds": 3600,
        "template": {
            "spec": {
                "nodeSelector": {"gpu": "a100"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [
                    {
                        "resources": {"limits": {"memory": "2Gi", "nvidia.com/gpu": 1}},
                        "env": [
                            {"name": "OTHER", "value": "from-manifest"},
                            {"name": "KEEP", "value": "1"},
                        ],
                    },
                    {"name": "sidecar", "image": "proxy:2"},
                ],
            }
        },
    },
}


def test_the_item_is_laid_over_w_and_b_s_manifest_and_the_result_is_a_valid_job() -> None:
    job = build(W_AND_B_MANIFEST)
    assert problems(job, "job-batch-v1") == []
    meta = job["metadata"]
    assert meta["name"] == "la-1234-42-abc123" and "generateName" not in meta
    assert meta["labels"]["team"] == "vision"
    assert meta["labels"]["launch-agent/item"] == "42"
    assert meta["annotations"]["launch-agent/queue"] == "team queue"  # exact, unlike labels
    assert meta["finalizers"] == [m.FINALIZER]
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 3600
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["nodeSelector"] == {"gpu": "a100"}
    main, sidecar = pod["containers"]
    assert main["name"] == "launch" and main["image"] == "trainer:1"
    assert main["command"] == ["python", "train.py", "--lr", "0.1"] and "args" not in main
    assert main["resources"]["limits"]["memory"] == "2Gi"
    assert sidecar["image"] == "proxy:2" and "command" not in sidecar
    env = {e["name"]: e for e in main["env"]}
    assert env["OTHER"] == {"name": "OTHER", "value": "x"}  # the contract wins
    assert env["KEEP"]["value"] == "1"
    assert env["WANDB_API_KEY"] == {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "la-1234-42-abc123-env", "key": "WANDB_API_KEY"}},
    }
    assert "sk-secret-value-123" not in repr(job)


def test_namespace_precedence_and_the_args_only_form() -> None:
    assert m.namespace_of(W_AND_B_MANIFEST, "agent-ns") == "ml"
    assert m.namespace_of({"namespace": "short"}, "agent-ns") == "short"
    assert m.namespace_of({}, "agent-ns") == "agent-ns"
    with pytest.raises(SpecError, match="not a namespace name"):
        m.namespace_of({"namespace": "Bad_NS"}, "x")
    job = build(
        {"spec": {"template": {"spec": {"containers": [{"command": ["/entry"]}]}}}},
        command=["--epochs", "3"],
        args_only=True,
    )
    main = job["spec"]["template"]["spec"]["containers"][0]
    assert main["command"] == ["/entry"] and main["args"] == ["--epochs", "3"]


@pytest.mark.parametrize(
    ("resource_args", "match"),
    [
        ({"kind": "CronJob"}, "only batch/v1 Job"),
        ({"configFile": "/root/.kube/config"}, "kube_config"),
        ({"mystery": 1}, "unknown key"),
        ({"metadata": {"labels": {"launch-agent/item": "7"}}}, "are the agent's"),
        ({"spec": {"selector": {}}}, "selected by Kubernetes"),
        ({"spec": "nope"}, "expected a mapping"),
    ],
)
def test_manifests_that_cannot_be_used_are_refused_naming_the_field(
    resource_args: dict[str, Any], match: str
) -> None:
    with pytest.raises(SpecError, match=match):
        build(resource_args)


def test_a_job_needs_an_image() -> None:
    with pytest.raises(SpecError, match="needs an image"):
        build({}, image=None)
    job = build({"spec": {"template": {"spec": {"containers": [{"image": "own:1"}]}}}}, image=None)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "own:1"


def test_names_and_label_values_are_what_kubernetes_accepts() -> None:
    jobs = Path("/data/jobs")
    plain = m.job_name(jobs, "42", "abc123")
    assert plain.startswith("la-") and plain.endswith("-42-abc123")
    odd = m.job_name(jobs, "Item/With Spaces" * 5, "RUN_ID")
    assert len(odd) <= 63 and m._DNS_LABEL.fullmatch(odd)
    assert odd == m.job_name(jobs, "Item/With Spaces" * 5, "RUN_ID")
    assert odd != m.job_name(jobs, "Item/With Spaces" * 5, "RUN_Id")
    assert m.label_value("abc") == "abc"
    hashed = m.label_value("team queue/" + "x" * 80)
    assert len(hashed) <= 63 and m._LABEL_VALUE.fullmatch(hashed)


HOST_CASES = [
    ({"spec": {"template": {"spec": {"hostPID": True}}}}, "hostPID"),
    ({"spec": {"template": {"spec": {"hostNetwork": True}}}}, "hostNetwork"),
    ({"spec": {"template": {"spec": {"hostIPC": "true"}}}}, "hostIPC"),
    (
        {
            "spec": {
                "template": {"spec": {"containers": [{"securityContext": {"privileged": True}}]}}
            }
        },
        "privileged",
    ),
    (
        {
            "spec": {
                "template": {
                    "spec": {
                        "initContainers": [
                            {
                                "name": "i",
                                "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
                            }
                        ],
                        "containers": [{}],
                    }
                }
            }
        },
        "capabilities",
    ),
    (
        {"spec": {"template": {"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}}},
        "hostPath",
    ),
]


@pytest.mark.parametrize(("resource_args", "key"), HOST_CASES)
def test_host_access_is_refused_unless_the_agent_allows_it(
    resource_args: dict[str, Any], key: str
) -> None:
    with pytest.raises(SpecError) as refused:
        m.check_host_access(resource_args)
    assert key in str(refused.value) and "kubernetes_allow" in str(refused.value)
    m.check_host_access(resource_args, allow=[key])


def secure_config(**extra: Any) -> AgentConfig:
    return AgentConfig.load(
        None,
        secure_mode=True,
        jobs={
            "train": {
                "entry_point": ["python", "train.py"],
                "image": "t:1",
                "resource": "kubernetes",
            }
        },
        **extra,
    )


def item(resource_args: dict[str, Any]) -> LaunchSpec:
    return LaunchSpec.parse(
        {"job": "train", "resource": "kubernetes", "resource_args": {"kubernetes": resource_args}}
    )


def container(**fields: Any) -> dict[str, Any]:
    return {"spec": {"template": {"spec": {"containers": [fields]}}}}


@pytest.mark.parametrize(
    ("resource_args", "match"),
    [
        (container(command=["sh", "-c", "curl evil"]), "command.*kubernetes_allow"),
        (container(image="other:1"), "image"),
        (container(env=[{"name": "A", "value": "1"}]), "env"),
        (container(args=["--x"]), "args"),
        ({"namespace": "kube-system"}, "namespace"),
        ({"metadata": {"namespace": "kube-system"}}, "namespace"),
        (
            {"spec": {"template": {"spec": {"serviceAccountName": "admin", "containers": [{}]}}}},
            "service account",
        ),
        (
            {
                "spec": {
                    "template": {"spec": {"initContainers": [{"name": "i"}], "containers": [{}]}}
                }
            },
            "initContainers",
        ),
        *[(case, key) for case, key in HOST_CASES],
    ],
)
def test_secure_mode_refuses_what_decides_what_runs_or_reaches_the_node(
    resource_args: dict[str, Any], match: str
) -> None:
    with pytest.raises(SpecError, match=match):
        check_secure(item(resource_args), secure_config())


def test_secure_mode_keeps_pod_shaping_and_honours_the_allow_list() -> None:
    shaping = {
        "metadata": {"labels": {"team": "a"}},
        "spec": {
            "template": {
                "spec": {
                    "nodeSelector": {"gpu": "a100"},
                    "containers": [{"resources": {"limits": {"memory": "1Gi"}}}],
                }
            }
        },
    }
    check_secure(item(shaping), secure_config())
    check_secure(item(container(command=["x"])), secure_config(kubernetes_allow=["command"]))


# -- pod and Job states --
def pod(phase: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "launch", "resources": {"limits": {"memory": "16Mi"}}}]},
        "status": {"phase": phase, **status},
    }


def ended(code: int, reason: str) -> list[dict[str, Any]]:
    return [{"name": "launch", "state": {"terminated": {"exitCode": code, "reason": reason}}}]


def test_pod_states_read_as_the_agent_s_statuses() -> None:
    oom = s.pod_failure(pod("Failed", containerStatuses=ended(137, "OOMKilled")))
    assert oom == s.Status(RunState.FAILED, 137, "out of memory (limit 16Mi)")
    evicted = pod(
        "Failed",
        containerStatuses=ended(143, "Error"),
        conditions=[
            {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
        ],
    )
    assert s.pod_failure(evicted).state is RunState.PREEMPTED
    assert "evicted" in (s.pod_failure(evicted).reason or "")
    assert (
        s.pod_failure(pod("Failed", containerStatuses=ended(143, "Error"))).state
        is RunState.PREEMPTED
    )
    plain = s.pod_failure(pod("Failed", containerStatuses=ended(3, "Error")))
    assert plain == s.Status(RunState.FAILED, 3, None)
    assert s.pod_failure(evicted, cancelled=True).state is RunState.STOPPED
    waiting = pod(
        "Pending",
        containerStatuses=[
            {
                "name": "launch",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "nope"}},
            }
        ],
    )
    assert s.fatal_waiting(waiting) == "ImagePullBackOff: nope"
    creating = pod(
        "Pending",
        containerStatuses=[
            {"name": "launch", "state": {"waiting": {"reason": "ContainerCreating"}}}
        ],
    )
    assert s.fatal_waiting(creating) is None and not s.has_started(creating)
    deadline = {
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "too long",
                }
            ]
        }
    }
    status = s.job_failure(deadline, pod("Failed", containerStatuses=ended(1, "Error")))
    assert status.state is RunState.FAILED and status.reason == "DeadlineExceeded: too long"
    assert s.job_failure(deadline, None).reason == "the Job failed (DeadlineExceeded: too long)"
