"""Kill the agent (SIGKILL) while its Kubernetes Jobs run; restarted, it adopts them.

Real agent processes against the fake API server: the restarted agent (same identity,
generation + 1) finds each item's Job by its name and labels, follows the ones still
running to their end, settles the one that ended while no agent watched with its real exit
code (the agent's finalizer kept the Job), and creates no Job twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_lib.states import ItemState
from tests.kubernetes.conftest import Harness, job_spec

pytestmark = pytest.mark.timeout(180)

LAUNCH_AGENT = Path(sys.executable).parent / "launch-agent"
AGENT_TIMEOUT = 600.0  # far longer than the test: the restart must not wait for it
WAIT = 60.0
GATE = "while [ ! -e /tmp/release ]; do sleep 0.05; done; "


def start_agent(harness: Harness, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LAUNCH_AGENT_POLL_INTERVAL": "0.02",
        "LAUNCH_AGENT_HEARTBEAT_INTERVAL": "0.1",
        "LAUNCH_AGENT_STOP_CHECK_INTERVAL": "0.05",
        "LAUNCH_AGENT_DEFAULT_RESOURCE": "kubernetes",
        "LAUNCH_AGENT_AGENT_TIMEOUT": str(AGENT_TIMEOUT),
        "LAUNCH_AGENT_KUBE_CONFIG": str(harness.kubeconfig),
    }
    command = [
        str(LAUNCH_AGENT),
        "run",
        "--backend",
        harness.db_url,
        "--data-dir",
        str(harness.data_dir),
        "--queue",
        harness.queue,
        "--max-jobs",
        "4",
        *extra,
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_until(predicate: Callable[[], object], what: str, log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    text = log.read_text() if log.exists() else ""
    raise AssertionError(f"timed out after {WAIT:.0f}s waiting for {what}\n{text}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_a_restarted_agent_adopts_its_jobs_and_settles_them_with_their_real_ends(
    harness: Harness, busybox: str, tmp_path: Path
) -> None:
    log = tmp_path / "agent.log"
    specs = {
        "finishes": f"echo first half; {GATE}echo second half; exit 0",
        "fails": f"echo failing soon; {GATE}echo bye; exit 7",
        "ends_unwatched": f"echo quick; {GATE}echo done quick; exit 5",
    }
    ids = {name: harness.push(job_spec(busybox, script)) for name, script in specs.items()}
    kube = harness.kube

    def pod_of(name: str) -> str:
        [pod] = kube.running_pods(item=ids[name])
        return str(pod["metadata"]["name"])

    first = start_agent(harness, log)
    try:
        wait_until(
            lambda: all(kube.running_pods(item=i) for i in ids.values()),
            "every job's pod to run",
            log,
        )
        wait_until(
            lambda: "first half" in harness.output(ids["finishes"]), "the first job's output", log
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        stop(first)
    assert all(harness.item(i).state is ItemState.CLAIMED for i in ids.values())

    # One job ends while no agent runs: its Job stays (the agent's finalizer) to tell how.
    kube.touch(pod_of("ends_unwatched"), "/tmp/release")
    wait_until(
        lambda: any(
            c["type"] == "Failed"
            for j in harness.jobs(ids["ends_unwatched"])
            for c in j["status"].get("conditions") or []
        ),
        "the unwatched job's Job to fail",
        log,
    )
    running = {name: pod_of(name) for name in ("finishes", "fails")}

    second = start_agent(harness, log, "--exit-when-idle")
    try:
        wait_until(
            lambda: all(f"item {i}: re-attached" in log.read_text() for i in ids.values()),
            "the restarted agent to re-attach every job",
            log,
        )
        for name, pod in running.items():  # still running when adopted; now let them end
            assert harness.item(ids[name]).state is ItemState.CLAIMED
            kube.touch(pod, "/tmp/release")
        infos = dict(zip(ids, harness.wait_ended(list(ids.values()), WAIT), strict=True))
        assert second.wait(WAIT) == 0
    finally:
        stop(second)
    text = log.read_text()
    assert "taking back 3 item(s)" in text, text
    assert infos["finishes"].state is ItemState.FINISHED and infos["finishes"].exit_code == 0
    assert infos["fails"].state is ItemState.FAILED and infos["fails"].failure_phase == "run"
    assert infos["fails"].exit_code == 7
    assert "exited with code 7" in (infos["fails"].failure_message or ""), text
    unwatched = infos["ends_unwatched"]
    assert unwatched.state is ItemState.FAILED and unwatched.exit_code == 5, unwatched
    assert "done quick" in "".join(unwatched.files.values())
    # The adopted jobs' logs were read again from the pods' first line.
    assert "first half" in harness.output(ids["finishes"])
    assert "second half" in harness.output(ids["finishes"])
    creates = [r for r in kube.requests if r.method == "POST" and r.path.endswith("/jobs")]
    assert len(creates) == 3  # one Job per item, never a second
    assert kube.rejected == [] and kube.errors == []
    for kind in ("jobs", "pods", "secrets"):
        assert kube.objects(kind) == [], kind
