"""The kubernetes runner driven by a real agent against the fake API server, whose pods run
on the local Docker engine: real output, real exit codes, real OOM kills and signals."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import pytest
import yaml

from agent_lib import LaunchAgent
from agent_lib.states import ItemState
from tests.helpers import REPO
from tests.kubernetes.conftest import NAMESPACE, Harness, job_spec
from tests.kubernetes.schema import problems

pytestmark = pytest.mark.timeout(120)

SECRET = "sk-test-kube-0123456789abcdefghij"
# Waits until the test creates /tmp/release in its container.
GATE = "while [ ! -e /tmp/release ]; do sleep 0.05; done; "


def readme_role() -> dict[str, Any]:
    """The Role manifest the README gives for the agent."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    [role] = [yaml.safe_load(b) for b in blocks if "kind: Role" in b]
    return dict(role)


def needed_permissions(requests: list[Any]) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of each request the agent made, as RBAC sees it."""
    needed = set()
    for request in requests:
        match = re.fullmatch(
            r"/(api/v1|apis/batch/v1)/namespaces/[^/]+/(\w+)(/[^/]+)?(/\w+)?", request.path
        )
        assert match is not None, request.path
        group = "batch" if match[1] == "apis/batch/v1" else ""
        resource = match[2] + (match[4] or "")
        if resource == "pods/eviction":
            continue  # the test's own `kubectl drain`
        named = match[3] is not None
        verb = {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete",
        }.get(request.method)
        if verb is None:
            watching = request.query.get("watch", "").lower() in ("true", "1")
            verb = "get" if named else ("watch" if watching else "list")
        needed.add((group, resource, verb))
    return needed


def assert_server_clean(harness: Harness) -> None:
    """The fake refused nothing the runner sent, failed at nothing, no Job, pod or Secret
    was left behind once the items were settled, and the README's Role allowed every
    request the agent made."""
    assert harness.kube.rejected == [], harness.kube.rejected
    assert harness.kube.errors == []
    for kind in ("jobs", "pods", "secrets"):
        assert harness.kube.objects(kind) == [], kind
    assert_role_allows(harness)


def assert_role_allows(harness: Harness) -> None:
    """The README's Role (a valid Role) allows every request the agent made."""
    role = readme_role()
    assert problems(role, "role-rbac-v1") == []
    allowed = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = needed_permissions(harness.kube.requests)
    assert ("batch", "jobs", "create") in needed and ("", "pods", "watch") in needed
    missing = needed - allowed
    assert not missing, f"the README's Role lacks {sorted(missing)}"


def requests_to(harness: Harness, method: str, suffix: str) -> list[Any]:
    return [r for r in harness.kube.requests if r.method == method and r.path.endswith(suffix)]


async def until(predicate: Any, what: str, timeout: float = 60) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_a_job_runs_end_to_end_with_the_key_only_in_its_secret(
    harness: Harness, busybox: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    script = (
        'echo "RUN=$WANDB_RUN_ID LAUNCH=$WANDB_LAUNCH Q=$WANDB_LAUNCH_QUEUE_NAME '
        'TRACE=$WANDB_LAUNCH_TRACE_ID PROJECT=$WANDB_PROJECT CFG=$WANDB_CONFIG"; '
        'echo "KEYLEN=${#WANDB_API_KEY} TEAM=$TEAM"; echo "ARGS=$*"'
    )
    spec = job_spec(
        busybox,
        script,
        project="proj",
        run_id="kuberun1",
        _wandb_api_key=SECRET,
        overrides={
            "entry_point": ["sh", "-c", script, "prog"],
            "args": ["--lr", "0.1"],
            "run_config": {"lr": 0.1},
        },
        resource_args={
            "kubernetes": {
                "namespace": NAMESPACE,
                "metadata": {"labels": {"team": "vision"}},
                "spec": {
                    "template": {
                        "spec": {
                            "nodeSelector": {"pool": "cpu"},
                            "containers": [
                                {
                                    "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                                    "env": [{"name": "TEAM", "value": "vision"}],
                                }
                            ],
                        }
                    }
                },
            }
        },
    )
    item_id = harness.push(spec)
    harness.run()

    info = harness.item(item_id)
    assert info.state is ItemState.FINISHED and info.exit_code == 0, info
    out = harness.output(item_id)
    assert f"RUN=kuberun1 LAUNCH=True Q={harness.queue} TRACE={item_id} PROJECT=proj" in out
    assert 'CFG={"lr": 0.1}' in out
    assert f"KEYLEN={len(SECRET)} TEAM=vision" in out
    assert "ARGS=--lr 0.1" in out
    assert SECRET not in out

    [created] = requests_to(harness, "POST", "/jobs")
    job = created.body
    meta = job["metadata"]
    assert meta["namespace"] == NAMESPACE and meta["labels"]["team"] == "vision"
    assert meta["annotations"]["launch-agent/item"] == item_id
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"}
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert "value" not in env["WANDB_API_KEY"]
    ref = env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]
    # The key went to the cluster once, in the job's Secret, and that Secret was made the
    # Job's (Kubernetes deletes it with the Job); it is in no other request and no log.
    [secret] = requests_to(harness, "POST", "/secrets")
    assert secret.body["metadata"]["name"] == ref["name"]
    assert secret.body["stringData"] == {ref["key"]: SECRET}
    [owned] = requests_to(harness, "PATCH", f"/secrets/{ref['name']}")
    [owner] = owned.body["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("Job", meta["name"]) and owner["uid"]
    others = [r for r in harness.kube.requests if r is not secret]
    assert SECRET not in json.dumps([r.body for r in others])
    assert SECRET not in caplog.text
    # Settled: the Job is deleted and its Secret with it.
    assert [r.path for r in requests_to(harness, "DELETE", f"/secrets/{ref['name']}")]
    assert_server_clean(harness)


def test_failures_say_why_with_the_pod_s_log_tail(harness: Harness, busybox: str) -> None:
    failing = harness.push(job_spec(busybox, "echo step one; echo about to fail >&2; exit 3"))
    hog = harness.push(
        job_spec(
            busybox,
            "echo filling memory; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
            resource_args={
                "kubernetes": {
                    "spec": {
                        "template": {
                            "spec": {"containers": [{"resources": {"limits": {"memory": "16Mi"}}}]}
                        }
                    }
                }
            },
        )
    )
    no_image = harness.push(job_spec("launch-agent-test/absent:1", "echo never"))
    harness.run()

    fail = harness.item(failing)
    assert fail.state is ItemState.FAILED and fail.failure_phase == "run"
    assert fail.exit_code == 3 and "exited with code 3" in (fail.failure_message or "")
    tail = "".join(fail.files.values())
    assert "step one" in tail and "about to fail" in tail
    oom = harness.item(hog)
    assert oom.state is ItemState.FAILED and oom.failure_phase == "run"
    assert "out of memory (limit 16Mi)" in (oom.failure_message or ""), oom.failure_message
    assert "filling memory" in "".join(oom.files.values())
    pull = harness.item(no_image)
    assert pull.state is ItemState.FAILED and pull.failure_phase == "run"
    message = pull.failure_message or ""
    assert "ImagePullBackOff" in message and "launch-agent-test/absent:1" in message, message
    assert_server_clean(harness)


def test_an_evicted_pod_is_preempted_and_its_job_resumes_as_the_same_run(
    harness: Harness, busybox: str
) -> None:
    resumable = (
        'if [ "$WANDB_RESUME" = allow ]; then echo resumed; exit 0; fi; '
        'echo first run; trap "echo got TERM; exit 143" TERM; sleep 600 & wait'
    )
    item_id = harness.push(job_spec(busybox, resumable))

    async def scenario() -> None:
        agent = LaunchAgent(harness.db, harness.agent_config(exit_when_idle=False))
        loop_task = asyncio.create_task(agent.loop())
        try:
            [pod] = await until(lambda: harness.kube.running_pods(item=item_id), "the pod to run")
            name = pod["metadata"]["name"]
            eviction = {  # what `kubectl drain` sends for each pod
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "deleteOptions": {"gracePeriodSeconds": 5},
            }
            code, body = await asyncio.to_thread(
                harness.kube.post, f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/eviction", eviction
            )
            assert code == 201, body
            await until(lambda: len(harness.db.list_items()) == 2, "the item to be requeued")
            await until(
                lambda: all(i.state.is_terminal for i in harness.db.list_items()), "the resume"
            )
        finally:
            agent.stop()
            await asyncio.wait_for(loop_task, 60)

    asyncio.run(scenario())
    first = harness.item(item_id)
    assert first.state is ItemState.PREEMPTED, first
    assert "got TERM" in harness.output(item_id)
    [resumed] = [i for i in harness.db.list_items() if i.id != item_id]
    assert resumed.state is ItemState.FINISHED
    assert resumed.run_spec["run_id"] == first.run_id
    assert resumed.run_spec["_resume_count"] == 1
    assert "resumed" in harness.output(resumed.id)
    assert_server_clean(harness)


def test_a_stop_request_deletes_the_job_in_the_foreground_and_the_item_ends_stopped(
    harness: Harness, busybox: str
) -> None:
    item_id = harness.push(
        job_spec(busybox, 'echo working; trap "echo got TERM; exit 143" TERM; sleep 600 & wait')
    )

    async def scenario() -> None:
        agent = LaunchAgent(harness.db, harness.agent_config(exit_when_idle=False))
        loop_task = asyncio.create_task(agent.loop())
        try:
            await until(lambda: harness.kube.running_pods(item=item_id), "the pod to run")
            await until(lambda: "working" in harness.output(item_id), "the job's first output")
            harness.db.cancel_run_queue_item(item_id, "tester@host")
            await until(lambda: harness.item(item_id).state.is_terminal, "the stop", 30)
        finally:
            agent.stop()
            await asyncio.wait_for(loop_task, 60)

    asyncio.run(scenario())
    info = harness.item(item_id)
    assert info.state is ItemState.STOPPED, info
    assert info.stop_requested_by == "tester@host"
    assert "got TERM" in harness.output(item_id)
    deletes = [r for r in requests_to(harness, "DELETE", "") if "/jobs/" in r.path]
    assert deletes[0].body["propagationPolicy"] == "Foreground"
    assert deletes[0].body["gracePeriodSeconds"] == 1  # cancel_grace
    assert_server_clean(harness)


def test_the_server_validates_every_body_and_a_refused_manifest_fails_the_item(
    harness: Harness, busybox: str
) -> None:
    bad = harness.push(
        job_spec(
            busybox,
            "echo never",
            resource_args={
                "kubernetes": {
                    "spec": {"template": {"spec": {"containers": [{"imagePullPolcy": "Always"}]}}}
                }
            },
        )
    )
    good = harness.push(job_spec(busybox, "echo fine"))
    harness.run()

    refused = harness.item(bad)
    assert refused.state is ItemState.FAILED and refused.failure_phase == "agent"
    assert "imagePullPolcy" in (refused.failure_message or ""), refused.failure_message
    [(request, why)] = harness.kube.rejected
    assert request.path.endswith("/jobs") and "imagePullPolcy" in why
    assert harness.item(good).state is ItemState.FINISHED
    for kind in ("jobs", "pods"):
        assert harness.kube.objects(kind) == []


def test_host_access_is_refused_before_anything_is_created(harness: Harness, busybox: str) -> None:
    host = {"kubernetes": {"spec": {"template": {"spec": {"hostNetwork": True}}}}}
    refused = harness.push(job_spec(busybox, "echo never", resource_args=host))
    harness.run()
    info = harness.item(refused)
    assert info.state is ItemState.FAILED and info.failure_phase == "agent"
    assert "hostNetwork" in (info.failure_message or "") and "kubernetes_allow" in (
        info.failure_message or ""
    )
    assert harness.kube.requests == [] or not requests_to(harness, "POST", "/jobs")

    allowed = harness.push(job_spec(busybox, "echo on the host network", resource_args=host))
    harness.run(kubernetes_allow=["hostNetwork"])
    assert harness.item(allowed).state is ItemState.FINISHED
    assert_server_clean(harness)


def test_secure_mode_refuses_pod_keys_and_runs_named_jobs(harness: Harness, busybox: str) -> None:
    jobs = {
        "hello": {
            "entry_point": ["sh", "-c", "echo hello from $WANDB_RUN_ID"],
            "image": busybox,
            "resource": "kubernetes",
        }
    }

    def pod_spec(**fields: Any) -> dict[str, Any]:
        return {"kubernetes": {"spec": {"template": {"spec": fields}}}}

    refused = {
        "hostPID": pod_spec(hostPID=True),
        "command": pod_spec(containers=[{"command": ["sh", "-c", "id"]}]),
        "privileged": pod_spec(containers=[{"securityContext": {"privileged": True}}]),
        "hostPath": pod_spec(volumes=[{"name": "root", "hostPath": {"path": "/"}}]),
    }
    ids = {
        key: harness.push({"job": "hello", "resource": "kubernetes", "resource_args": args})
        for key, args in refused.items()
    }
    fine = harness.push(
        {
            "job": "hello",
            "resource": "kubernetes",
            "resource_args": pod_spec(nodeSelector={"a": "b"}),
        }
    )
    harness.run(secure_mode=True, jobs=jobs)
    for key, item_id in ids.items():
        info = harness.item(item_id)
        assert info.state is ItemState.FAILED and info.failure_phase == "agent", info
        assert key in (info.failure_message or "") and "secure_mode" in (info.failure_message or "")
    assert harness.item(fine).state is ItemState.FINISHED
    assert "hello from" in harness.output(fine)
    [created] = requests_to(harness, "POST", "/jobs")  # only the allowed one reached the cluster
    assert created.body["metadata"]["annotations"]["launch-agent/item"] == fine
    assert_server_clean(harness)


def test_watches_resume_after_the_server_drops_them_and_relist_after_410(
    harness: Harness, busybox: str
) -> None:
    item_id = harness.push(job_spec(busybox, f"echo waiting; {GATE}echo released; exit 0"))

    async def scenario() -> None:
        agent = LaunchAgent(harness.db, harness.agent_config(exit_when_idle=False))
        loop_task = asyncio.create_task(agent.loop())
        try:
            [pod] = await until(lambda: harness.kube.running_pods(item=item_id), "the pod to run")
            await asyncio.to_thread(harness.kube.compact)  # its watches' versions expire
            await asyncio.to_thread(harness.kube.end_watches)
            await asyncio.to_thread(harness.kube.touch, pod["metadata"]["name"], "/tmp/release")
            await until(lambda: harness.item(item_id).state.is_terminal, "the job's end")
        finally:
            agent.stop()
            await asyncio.wait_for(loop_task, 60)

    asyncio.run(scenario())
    assert harness.item(item_id).state is ItemState.FINISHED
    assert "released" in harness.output(item_id)
    lists = [r for r in harness.kube.requests if r.method == "GET" and r.path.endswith("/jobs")]
    assert len([r for r in lists if "watch" not in r.query]) >= 2  # listed again after 410
    assert_server_clean(harness)


def test_a_job_deleted_by_someone_else_fails_saying_so(harness: Harness, busybox: str) -> None:
    quick_stop = {
        "kubernetes": {"spec": {"template": {"spec": {"terminationGracePeriodSeconds": 1}}}}
    }
    item_id = harness.push(
        job_spec(busybox, "echo working; sleep 600 & wait", resource_args=quick_stop)
    )

    async def scenario() -> None:
        agent = LaunchAgent(harness.db, harness.agent_config(exit_when_idle=False))
        loop_task = asyncio.create_task(agent.loop())
        try:
            await until(lambda: harness.kube.running_pods(item=item_id), "the pod to run")
            [job] = harness.jobs(item_id)
            path = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{job['metadata']['name']}"
            # `kubectl delete job NAME`: background propagation, short grace for the pod
            options = {"propagationPolicy": "Background", "gracePeriodSeconds": 1}
            code, body = await asyncio.to_thread(harness.kube.send, "DELETE", path, options)
            assert code == 200, body
            await until(lambda: harness.item(item_id).state.is_terminal, "the job's end")
        finally:
            agent.stop()
            await asyncio.wait_for(loop_task, 60)

    asyncio.run(scenario())
    info = harness.item(item_id)
    assert info.state is ItemState.FAILED and info.failure_phase == "run", info
    assert "the Job was deleted by someone else" in (info.failure_message or "")
    assert "working" in "".join(info.files.values())
    assert_server_clean(harness)


def test_a_cut_log_stream_is_followed_again_and_the_log_ends_complete(
    harness: Harness, busybox: str
) -> None:
    # The job writes a line before the test cuts its log stream, one while no stream
    # follows it (the gap), and one after the runner follows it again.
    script = (
        "echo before; while [ ! -e /tmp/cut ]; do sleep 0.05; done; echo in the gap; "
        f"{GATE}echo after; exit 0"
    )
    item_id = harness.push(job_spec(busybox, script))

    async def scenario() -> None:
        agent = LaunchAgent(harness.db, harness.agent_config(exit_when_idle=False))
        loop_task = asyncio.create_task(agent.loop())
        try:
            [pod] = await until(lambda: harness.kube.running_pods(item=item_id), "the pod to run")
            name = pod["metadata"]["name"]
            await until(lambda: "before" in harness.output(item_id), "the first line")
            assert await asyncio.to_thread(harness.kube.cut_log_streams) == 1
            await asyncio.to_thread(harness.kube.touch, name, "/tmp/cut")
            await until(lambda: harness.kube.call(_streams(harness)) == 1, "a new log stream")
            await asyncio.to_thread(harness.kube.touch, name, "/tmp/release")
            await until(lambda: harness.item(item_id).state.is_terminal, "the job's end")
        finally:
            agent.stop()
            await asyncio.wait_for(loop_task, 60)

    asyncio.run(scenario())
    assert harness.item(item_id).state is ItemState.FINISHED
    assert harness.output(item_id) == "before\nin the gap\nafter\n"
    follows = [r for r in requests_to(harness, "GET", "/log") if r.query.get("follow")]
    assert len(follows) == 2 and follows[1].query.get("tailLines") == "0"
    assert_server_clean(harness)


async def _streams(harness: Harness) -> int:
    return len(harness.kube._log_streams)
