"""The Kubernetes Job a launch item becomes, and what an item may not put in it.

Pure functions over plain dicts (the manifest as JSON), no client import, so the agent's
secure-mode check can use them before anything runs.

`resource_args.kubernetes` is W&B's format: a Job manifest (`apiVersion`, `kind`,
`metadata`, `spec.template.spec...`), all optional, plus W&B's `namespace` shortcut. The
runner lays the item over it: the image on the first container, the command (`command` is
the image's ENTRYPOINT, `args` its CMD, as in Kubernetes), the W&B environment contract on
every container, with each secret (the API key) as a `secretKeyRef` to a Secret the runner
owns, never as a plain value. It adds the agent's labels and annotations, a name made from
the job (so a second create for the same job is refused, which makes `run` idempotent),
`backoffLimit: 0` and `restartPolicy: Never` unless the manifest says otherwise, and a
finalizer that keeps the Job (and so the job's end) until the agent has settled its item.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from agent_lib.errors import SpecError
from agent_lib.redact import _SECRET_KEY

KUBERNETES = "kubernetes"
API_VERSION = "batch/v1"
KIND = "Job"

LABEL_PREFIX = "launch-agent/"
MANAGED_BY = ("app.kubernetes.io/managed-by", "launch-agent")
WANDB_RUN_LABEL = "wandb.ai/run-id"
# Keeps the Job (its status, its pods' exit codes) until the agent recorded the outcome.
FINALIZER = "launch-agent/settle"
# Written on the Job before the agent deletes it: a restarted agent knows it was a stop.
CANCELLED_ANNOTATION = "launch-agent/cancelled"
SECRET_SUFFIX = "-env"
DEFAULT_CONTAINER = "launch"

# What the agent's config can allow (`kubernetes_allow`); refused otherwise.
HOST_KEYS = ("hostPID", "hostIPC", "hostNetwork")
ALLOWABLE = frozenset({*HOST_KEYS, "privileged", "capabilities", "hostPath", "command"})
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
_SHORTCUTS = frozenset({"namespace"})
_AGENT_CONFIG_KEYS = {"configFile": "kube_config", "context": "kube_context"}
_TOP_KEYS = frozenset({"apiVersion", "kind", "metadata", "spec", *_SHORTCUTS})

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
MAX_DNS_LABEL = 63


def _where(path: str) -> str:
    return f"resource_args.{KUBERNETES}.{path}" if path else f"resource_args.{KUBERNETES}"


def _bad(path: str, what: str) -> SpecError:
    return SpecError(f"{_where(path)}: {what}")


# -- names and labels --
def job_name(jobs_dir: Path, item_id: str, run_id: str) -> str:
    """`la-<data dir hash>-<item>-<run>`, a DNS label (what a Job's name must be to label
    its pods). Ids that the rule changed, or a name that is too long, get a hash of the
    real ids instead, so two jobs never share a name and the same job always has one."""
    home = hashlib.sha256(str(jobs_dir).encode()).hexdigest()[:8]
    name = f"la-{home}-{item_id}-{run_id}"
    if _DNS_LABEL.fullmatch(name) and len(name) <= MAX_DNS_LABEL:
        return name
    ids = hashlib.sha256(f"{item_id}\0{run_id}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^a-z0-9-]+", "-", f"{item_id}-{run_id}".lower()).strip("-")
    head = f"la-{home}-{readable}"[: MAX_DNS_LABEL - len(ids) - 1].rstrip("-")
    return f"{head}-{ids}"


def label_value(value: str) -> str:
    """`value` if Kubernetes takes it as a label value, else a readable part and a hash."""
    if len(value) <= MAX_DNS_LABEL and _LABEL_VALUE.fullmatch(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:40].strip("-_.")
    return f"{readable}-{digest}" if readable else digest


def agent_labels(context_labels: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The context's `launch-agent.<x>` labels as Kubernetes labels (values made label-safe,
    for selectors) and annotations (the exact values, for matching a Job to its item)."""
    labels = {MANAGED_BY[0]: MANAGED_BY[1]}
    annotations = {}
    for key, value in context_labels.items():
        short = key.removeprefix("launch-agent.")
        labels[LABEL_PREFIX + short] = label_value(value)
        annotations[LABEL_PREFIX + short] = value
    return labels, annotations


def agent_selector(context_labels: dict[str, str]) -> str:
    """The label selector of every Job (and pod) one agent started."""
    agent = context_labels.get("launch-agent.agent", "")
    return f"{LABEL_PREFIX}agent={label_value(agent)}"


def secret_name(name: str) -> str:
    return f"{name}{SECRET_SUFFIX}"


def is_secret_env(name: str) -> bool:
    """Variables that go to the pod through the Secret: the API key and any variable whose
    name says KEY/TOKEN/SECRET/PASSWORD/CREDENTIAL."""
    return bool(_SECRET_KEY.search(name))


# -- reading the item's manifest --
def _mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(path, f"expected a list, got {type(value).__name__}")
    return value


def pod_specs(manifest: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in a manifest (a mapping with a container list), with its path."""
    stack: list[tuple[str, Any]] = [("", manifest)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            if any(isinstance(node.get(k), list) for k in _CONTAINER_LISTS):
                yield path, node
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(node))


def containers_of(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in _CONTAINER_LISTS:
        items = pod.get(key)
        for i, container in enumerate(items if isinstance(items, list) else []):
            if isinstance(container, dict):
                yield f"{key}[{i}]", container


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value) and value is not None


def _refusal(path: str, why: str, allow_name: str, secure: bool = False) -> SpecError:
    head = "secure_mode: " if secure else ""
    return SpecError(
        f"{head}{_where(path)} is not allowed by this agent: {why}. Remove it from the launch "
        f"spec, or add {allow_name!r} to the agent's kubernetes_allow config to permit it."
    )


def _mappings(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every mapping anywhere in `node`, with its path (iterative: specs are hostile)."""
    stack: list[tuple[str, Any]] = [("", node)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            yield path, value
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))


def check_host_access(
    resource_args: dict[str, Any], allow: Iterable[str] = (), secure: bool = False
) -> None:
    """Refuse what reaches past the pod onto its node, unless `kubernetes_allow` names it:
    hostPID / hostIPC / hostNetwork, privileged containers, added capabilities, hostPath
    volumes. Looked for anywhere in the manifest (failing closed, whatever the nesting)."""
    allowed = set(allow)
    for path, node in _mappings(resource_args):
        here = f"{path}." if path else ""
        for key in HOST_KEYS:
            if key in node and _truthy(node.get(key)) and key not in allowed:
                why = f"{key} shares the node's namespace with the job"
                raise _refusal(f"{here}{key}", why, key, secure)
        if "hostPath" in node and "hostPath" not in allowed:
            why = "a hostPath volume mounts the node's files into the job"
            raise _refusal(f"{here}hostPath", why, "hostPath", secure)
        context = node.get("securityContext")
        if not isinstance(context, dict):
            continue
        where = f"{here}securityContext"
        if _truthy(context.get("privileged")) and "privileged" not in allowed:
            why = "a privileged container has root on the node"
            raise _refusal(f"{where}.privileged", why, "privileged", secure)
        caps = context.get("capabilities")
        if isinstance(caps, dict) and caps.get("add") and "capabilities" not in allowed:
            why = "it adds kernel capabilities"
            raise _refusal(f"{where}.capabilities.add", why, "capabilities", secure)


def check_secure(resource_args: dict[str, Any], allow: Iterable[str] = ()) -> None:
    """Secure mode: the item's manifest may shape the pod (resources, node selection,
    tolerations, labels...) but not decide what runs or with which rights: no container
    `command` (unless allowed), `args`, `image`, `env`/`envFrom`, `workingDir`, no init or
    ephemeral containers, no service account, no namespace, and nothing
    `check_host_access` refuses."""
    allowed = set(allow)
    check_host_access(resource_args, allowed, secure=True)
    metadata = resource_args.get("metadata")
    if "namespace" in resource_args or (isinstance(metadata, dict) and "namespace" in metadata):
        raise SpecError(
            f"secure_mode: {_where('namespace')} is not allowed: the agent decides where its "
            "jobs run (kube_namespace)"
        )
    for path, pod in pod_specs(resource_args):
        for key in ("initContainers", "ephemeralContainers"):
            if key in pod:
                raise SpecError(f"secure_mode: {_where(f'{path}.{key}')} is not allowed")
        for key in ("serviceAccountName", "serviceAccount", "automountServiceAccountToken"):
            if key in pod:
                raise SpecError(
                    f"secure_mode: {_where(f'{path}.{key}')} is not allowed: the agent "
                    "decides the pod's service account"
                )
        for where, container in containers_of(pod):
            if "command" in container and "command" not in allowed:
                raise _refusal(
                    f"{path}.{where}.command", "it overrides what the job runs", "command", True
                )
            for key in ("args", "image", "env", "envFrom", "workingDir"):
                if key in container:
                    raise SpecError(
                        f"secure_mode: {_where(f'{path}.{where}.{key}')} is not allowed: "
                        "an item changes only what its named job allows"
                    )


# -- building the Job --
def namespace_of(resource_args: dict[str, Any], default: str) -> str:
    """W&B's precedence: `metadata.namespace`, the `namespace` shortcut, the agent's."""
    metadata = resource_args.get("metadata")
    for value in (
        metadata.get("namespace") if isinstance(metadata, dict) else None,
        resource_args.get("namespace"),
    ):
        if value is not None:
            if not isinstance(value, str) or not _DNS_LABEL.fullmatch(value):
                raise _bad("namespace", f"not a namespace name: {value!r}")
            return value
    return default


def name_of(resource_args: dict[str, Any], default: str) -> str:
    """The manifest's `metadata.name` if it gives one, else ours."""
    metadata = resource_args.get("metadata")
    value = metadata.get("name") if isinstance(metadata, dict) else None
    if value is None:
        return default
    if not isinstance(value, str) or not _DNS_LABEL.fullmatch(value) or len(value) > 63:
        raise _bad("metadata.name", f"not a DNS label of at most 63 characters: {value!r}")
    return value


def build_job(
    resource_args: dict[str, Any],
    *,
    name: str,
    namespace: str,
    image: str | None,
    command: list[str],
    args_only: bool,
    env: dict[str, str],
    labels: dict[str, str],
    annotations: dict[str, str],
    run_id: str,
    secret: str,
) -> dict[str, Any]:
    """The Job manifest: the item's `resource_args.kubernetes` with the job laid over it.

    `env` is the job's whole environment; secret-named variables become `secretKeyRef`s to
    the Secret `secret` (see `build_secret`), the others plain values. Raises SpecError
    naming the field when the manifest cannot be used.
    """
    manifest = copy.deepcopy(_mapping(resource_args, ""))
    for key in list(manifest):
        if key in _AGENT_CONFIG_KEYS:
            raise _bad(
                str(key),
                f"the cluster is the agent's choice: set {_AGENT_CONFIG_KEYS[key]} in the "
                "agent config instead",
            )
        if key not in _TOP_KEYS:
            known = ", ".join(sorted(_TOP_KEYS))
            raise _bad(str(key), f"unknown key for a Kubernetes Job (known keys: {known})")
    for key in _SHORTCUTS:
        manifest.pop(key, None)
    api_version = manifest.setdefault("apiVersion", API_VERSION)
    kind = manifest.setdefault("kind", KIND)
    if api_version != API_VERSION or kind != KIND:
        raise _bad(
            "kind",
            f"only {API_VERSION} Job is supported (got {api_version} {kind}); put the pod's "
            "settings under spec.template.spec",
        )
    metadata = _mapping(manifest.get("metadata"), "metadata")
    metadata.pop("generateName", None)
    metadata["name"] = name
    metadata["namespace"] = namespace
    job_labels = {**labels, WANDB_RUN_LABEL: label_value(run_id)}
    _add_ours(metadata, "labels", job_labels, "metadata.labels")
    _add_ours(metadata, "annotations", annotations, "metadata.annotations")
    finalizers = _list(metadata.get("finalizers"), "metadata.finalizers")
    metadata["finalizers"] = [*[f for f in finalizers if f != FINALIZER], FINALIZER]
    manifest["metadata"] = metadata

    spec = _mapping(manifest.get("spec"), "spec")
    spec.setdefault("backoffLimit", 0)
    for key in ("selector", "manualSelector"):
        if key in spec:
            raise _bad(f"spec.{key}", "the Job's pods are selected by Kubernetes, not the item")
    template = _mapping(spec.get("template"), "spec.template")
    template_meta = _mapping(template.get("metadata"), "spec.template.metadata")
    _add_ours(template_meta, "labels", labels, "spec.template.metadata.labels")
    template["metadata"] = template_meta
    pod = _mapping(template.get("spec"), "spec.template.spec")
    pod.setdefault("restartPolicy", "Never")
    containers = _list(pod.get("containers"), "spec.template.spec.containers") or [{}]
    for i, container in enumerate(containers):
        if not isinstance(container, dict):
            raise _bad(f"spec.template.spec.containers[{i}]", "expected a mapping")
        container.setdefault("name", DEFAULT_CONTAINER if i == 0 else f"{DEFAULT_CONTAINER}{i}")
    main = containers[0]
    if image:
        main["image"] = image
    if not main.get("image"):
        raise SpecError(
            "a kubernetes job needs an image: set docker.docker_image (or image_uri), give "
            f"spec.template.spec.containers[0].image in {_where('')}, or a source to build"
        )
    if command and args_only:
        main["args"] = list(command)
    elif command:
        main["command"] = list(command)
        main.pop("args", None)
    for i, container in enumerate(containers):
        container["env"] = _merged_env(container.get("env"), env, secret, i)
    pod["containers"] = containers
    template["spec"] = pod
    spec["template"] = template
    manifest["spec"] = spec
    return manifest


def _add_ours(metadata: dict[str, Any], key: str, ours: dict[str, str], path: str) -> None:
    existing = _mapping(metadata.get(key), path)
    for name in existing:
        if str(name).startswith(LABEL_PREFIX):
            raise _bad(f"{path}.{name}", f"keys starting with {LABEL_PREFIX!r} are the agent's")
    metadata[key] = {**existing, **ours}


def _merged_env(existing: Any, env: dict[str, str], secret: str, index: int) -> list[Any]:
    """The container's own env, with the job's contract laid over it (the contract wins)."""
    entries = _list(existing, f"spec.template.spec.containers[{index}].env")
    kept = [e for e in entries if not (isinstance(e, dict) and e.get("name") in env)]
    for key, value in env.items():
        if is_secret_env(key):
            ref = {"secretKeyRef": {"name": secret, "key": key}}
            kept.append({"name": key, "valueFrom": ref})
        else:
            kept.append({"name": key, "value": value})
    return kept


def secret_env(env: dict[str, str]) -> dict[str, str]:
    """The part of the job's environment that goes into its Secret."""
    return {k: v for k, v in env.items() if is_secret_env(k)}


def build_secret(
    name: str,
    namespace: str,
    data: dict[str, str],
    labels: dict[str, str],
    annotations: dict[str, str],
) -> dict[str, Any]:
    """The job's Secret (its API key and other secret variables), as `stringData`, with
    the agent's labels and annotations (whose job it is)."""
    metadata = {
        "name": name,
        "namespace": namespace,
        "labels": dict(labels),
        "annotations": dict(annotations),
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": dict(data),
    }


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to the Job, so Kubernetes deletes the Secret with it."""
    meta = job.get("metadata") or {}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta.get("name"),
        "uid": meta.get("uid"),
    }
