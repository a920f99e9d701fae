"""A Job's and its pods' state (as the API shows them) as the agent's `Status`.

Pure functions over the objects' JSON. The decisions:
- Job condition `Complete` (or `SuccessCriteriaMet`): finished.
- Job condition `Failed` (or `FailureTarget`): the last pod says why. A pod with a
  `DisruptionTarget` condition (evicted, preempted by the scheduler, its node drained or shut
  down) or ended by SIGTERM/SIGINT/SIGHUP/SIGKILL from outside is preempted, and the item is
  requeued to resume; `OOMKilled` is a failure, `out of memory (limit ...)`; otherwise the
  container's exit code and reason.
- A pod that cannot start for good (`ImagePullBackOff`, `ErrImageNeverPull`,
  `InvalidImageName`) fails the job at once with the kubelet's reason and message: left
  alone it would stay pending until `start_timeout`.
- Running while a pod's first container runs (or ran); starting before.
"""

from __future__ import annotations

import signal
from typing import Any

from agent_lib.runners.base import PREEMPTING_SIGNALS, Status, signal_status
from agent_lib.states import RunState

FATAL_WAITING = frozenset({"ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"})
DISRUPTION_REASONS = {
    "EvictionByEvictionAPI": "evicted (Eviction API, e.g. a node drain)",
    "PreemptionByScheduler": "preempted by the scheduler for a higher-priority pod",
    "PreemptionByKubeScheduler": "preempted by the scheduler for a higher-priority pod",
    "TerminationByKubelet": "ended by the kubelet (node pressure or shutdown)",
    "DeletionByTaintManager": "its node was tainted NoExecute",
    "DeletionByPodGC": "its node is gone",
}


def true_conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return {
        str(c.get("type")): c
        for c in conditions
        if isinstance(c, dict) and str(c.get("status")) == "True"
    }


def job_succeeded(job: dict[str, Any]) -> bool:
    conditions = true_conditions(job)
    return "Complete" in conditions or "SuccessCriteriaMet" in conditions


def job_failed(job: dict[str, Any]) -> dict[str, Any] | None:
    """The Job's Failed (or FailureTarget) condition, if it has failed."""
    conditions = true_conditions(job)
    return conditions.get("Failed") or conditions.get("FailureTarget")


def is_deleting(obj: dict[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _main_status(pod: dict[str, Any], container: str | None) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if isinstance(status, dict) and (container is None or status.get("name") == container):
            return status
    return {}


def main_container(pod: dict[str, Any]) -> str | None:
    containers = ((pod.get("spec") or {}).get("containers")) or []
    first = containers[0] if containers and isinstance(containers[0], dict) else {}
    name = first.get("name")
    return str(name) if name else None


def terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The job container's terminated state (its current one, else its last)."""
    status = _main_status(pod, main_container(pod))
    state = status.get("state") or {}
    ended = state.get("terminated") or (status.get("lastState") or {}).get("terminated")
    return ended if isinstance(ended, dict) else None


def has_started(pod: dict[str, Any]) -> bool:
    """Whether the job container ran (is running or has ended): it has logs."""
    state = _main_status(pod, main_container(pod)).get("state") or {}
    return bool(state.get("running") or state.get("terminated"))


def is_pod_over(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def fatal_waiting(pod: dict[str, Any]) -> str | None:
    """`Reason: message` of a container that cannot start for good, if there is one."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in FATAL_WAITING:
            message = waiting.get("message") or ""
            return f"{reason}: {message}" if message else str(reason)
    return None


def disruption(pod: dict[str, Any]) -> str | None:
    """Why the pod was disrupted (evicted, preempted, node drained...), if it was."""
    condition = true_conditions(pod).get("DisruptionTarget")
    if condition is not None:
        reason = str(condition.get("reason") or "DisruptionTarget")
        text = DISRUPTION_REASONS.get(reason, reason)
        message = condition.get("message")
        return f"pod {text}" + (f": {message}" if message else "")
    status = pod.get("status") or {}
    if status.get("reason") in ("Evicted", "Preempting", "Shutdown", "Terminated"):
        message = status.get("message")
        return f"pod {str(status['reason']).lower()}" + (f": {message}" if message else "")
    return None


def memory_limit(pod: dict[str, Any]) -> str | None:
    containers = ((pod.get("spec") or {}).get("containers")) or [{}]
    limits = ((containers[0] or {}).get("resources") or {}).get("limits") or {}
    value = limits.get("memory")
    return str(value) if value is not None else None


def pod_failure(pod: dict[str, Any], cancelled: bool = False) -> Status:
    """The status of a job whose last pod is `pod` and which ended without success."""
    ended = terminated(pod) or {}
    code = ended.get("exitCode")
    code = int(code) if isinstance(code, int) else None
    if cancelled:
        return Status(RunState.STOPPED, code, "cancelled")
    disrupted = disruption(pod)
    if disrupted is not None:
        return Status(RunState.PREEMPTED, code, disrupted)
    reason = ended.get("reason")
    if reason == "OOMKilled":
        limit = memory_limit(pod)
        return Status(
            RunState.FAILED, code, "out of memory" + (f" (limit {limit})" if limit else "")
        )
    if code is not None and code > 128 and (code - 128) in signal.Signals._value2member_map_:
        return signal_status(code - 128, code, PREEMPTING_SIGNALS | {signal.SIGKILL})
    message = ended.get("message")
    if reason and reason != "Error":
        return Status(RunState.FAILED, code, f"{reason}: {message}" if message else str(reason))
    return Status(RunState.FAILED, code, message or None)


def job_failure(job: dict[str, Any], last_pod: dict[str, Any] | None) -> Status:
    """The status of a Job with a Failed condition."""
    condition = job_failed(job) or {}
    why = str(condition.get("reason") or "Failed")
    if condition.get("message"):
        why += f": {condition['message']}"
    if last_pod is None or (terminated(last_pod) is None and disruption(last_pod) is None):
        return Status(RunState.FAILED, None, f"the Job failed ({why})")
    status = pod_failure(last_pod)
    if status.state is RunState.FAILED and why.startswith("DeadlineExceeded"):
        return Status(RunState.FAILED, status.exit_code, why)
    return status


def last_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest pod (the one the Job's end is about)."""
    if not pods:
        return None
    return max(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
