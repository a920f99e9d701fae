"""The agent's side of a cluster: one API client, and watches that follow its Jobs.

All Kubernetes I/O of a process runs on one event loop in a daemon thread (`on_cluster`),
as the container runner's engine calls run in threads: the agent's own loop (or a Prefect
flow's, or a test's) never waits on the API, and one client and one set of watches serve
every agent loop in the process, however many come and go.

Status comes from watch streams, never from polling: per namespace and agent, one watch on
its Jobs and one on their pods (list, then watch from the list's resourceVersion, resumed
where it stopped and listed again on `410 Gone`). Each event goes to the `Tracker` of its
Job, which decides the job's state (see `status.py`) and follows the pod's log into the
job folder. The terminal status is handed over only once the log is complete.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from agent_lib.errors import LaunchError, SpecError, TransientError
from agent_lib.runners.base import Status
from agent_lib.runners.kubernetes import status as k8s_status
from agent_lib.runners.kubernetes.manifest import CANCELLED_ANNOTATION, FINALIZER
from agent_lib.states import RunState

log = logging.getLogger("agent_lib.runners.kubernetes")
T = TypeVar("T")

WATCH_SECONDS = 300  # the server ends each watch after this; it is resumed at once
LOG_SETTLE = 30.0  # seconds a finished pod's log may take to be copied
LOG_RETRY = 1.0  # seconds before following a cut log stream again (unless the pod ended)
RETRY_CAP = 30.0
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MERGE_PATCH = "application/merge-patch+json"


# -- the loop all cluster I/O runs on --
_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _cluster_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="kubernetes", daemon=True).start()
            _loop = loop
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run `coro` on the cluster loop; a future any thread or loop can wait on."""
    return asyncio.run_coroutine_threadsafe(coro, _cluster_loop())


async def on_cluster(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` run on the cluster loop, from any other event loop."""
    return await asyncio.wrap_future(submit(coro))


# -- errors --
def _detail(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return str(exc.reason or exc.status)
    return str(body.get("message") or exc.reason or exc.status)


def api_error(what: str, exc: BaseException) -> Exception:
    """An API failure as ours: an outage is transient, a refusal says what to do."""
    if isinstance(exc, ApiException):
        detail = _detail(exc)
        if exc.status in (401, 403):
            return LaunchError(
                f"{what}: {detail} (the agent's Kubernetes credentials lack a permission: "
                "see the Role in README, Kubernetes)"
            )
        if exc.status in (400, 422):
            return SpecError(f"{what}: the cluster refused it: {detail}")
        if exc.status == 0 or exc.status == 429 or exc.status >= 500:
            return TransientError(f"{what}: the Kubernetes API failed ({exc.status}: {detail})")
        return LaunchError(f"{what}: {detail} ({exc.status})")
    if isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | OSError):
        return TransientError(f"{what}: cannot reach the Kubernetes API ({exc})")
    return LaunchError(f"{what}: {exc}")


def is_status(exc: BaseException, *codes: int) -> bool:
    return isinstance(exc, ApiException) and exc.status in codes


# -- one cluster --
@dataclass(frozen=True)
class ClusterKey:
    kube_config: str | None
    context: str | None


class Cluster:
    """One API client (a kubeconfig context, or the pod's service account) and the
    watches of the Jobs started on it. Used on the cluster loop only."""

    def __init__(self, key: ClusterKey) -> None:
        self.key = key
        self.default_namespace = "default"
        self._client: asyncio.Task[k8s.ApiClient] | None = None
        self._monitors: dict[tuple[str, str], Monitor] = {}

    async def client(self) -> k8s.ApiClient:
        if self._client is None or (self._client.done() and self._client.exception()):
            self._client = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._client)

    async def batch(self) -> Any:
        return batch_api(await self.client())

    async def core(self) -> Any:
        return core_api(await self.client())

    async def _connect(self) -> k8s.ApiClient:
        configuration = k8s.Configuration()
        path, context = self.key.kube_config, self.key.context
        try:
            if path is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                with contextlib.suppress(OSError):
                    self.default_namespace = IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
            else:
                await k8s_config.load_kube_config(
                    config_file=path, context=context, client_configuration=configuration
                )
                contexts, active = k8s_config.list_kube_config_contexts(path)
                chosen = next((c for c in contexts if c.get("name") == context), active)
                namespace = ((chosen or {}).get("context") or {}).get("namespace")
                self.default_namespace = namespace or "default"
        except (ConfigException, OSError, ValueError) as exc:
            where = path or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise LaunchError(
                f"cannot load the Kubernetes config ({where}"
                f"{f', context {context}' if context else ''}): {exc}. Set kube_config / "
                "kube_context in the agent config, or run the agent in the cluster."
            ) from exc
        # One connection per followed pod log plus the watches: no pool limit, or a busy
        # agent's watches would queue behind its log streams.
        configuration.connection_pool_maxsize = 0
        return k8s.ApiClient(configuration)

    def monitor(self, namespace: str, selector: str) -> Monitor:
        key = (namespace, selector)
        found = self._monitors.get(key)
        if found is None:
            found = self._monitors[key] = Monitor(self, namespace, selector)
        return found


_clusters: dict[ClusterKey, Cluster] = {}
_clusters_lock = threading.Lock()


async def _close_clients() -> None:
    for cluster in list(_clusters.values()):
        task = cluster._client
        if task is not None and task.done() and not task.exception():
            await task.result().close()


@atexit.register
def _close_at_exit() -> None:
    """Close the clients' connections at exit (else aiohttp warns of unclosed sessions)."""
    if _loop is not None and _loop.is_running():
        with contextlib.suppress(Exception):
            submit(_close_clients()).result(timeout=2)


def cluster_for(kube_config: Path | str | None, context: str | None) -> Cluster:
    key = ClusterKey(str(kube_config) if kube_config else None, context or None)
    with _clusters_lock:
        found = _clusters.get(key)
        if found is None:
            found = _clusters[key] = Cluster(key)
        return found


def batch_api(api: k8s.ApiClient) -> Any:
    """The typed API objects, used as `Any`: bodies are plain manifests (dicts), which the
    client sends as they are, and its typed signatures would want its model classes."""
    return k8s.BatchV1Api(api)


def core_api(api: k8s.ApiClient) -> Any:
    return k8s.CoreV1Api(api)


def to_dict(api: k8s.ApiClient, obj: Any) -> dict[str, Any]:
    data = api.sanitize_for_serialization(obj)
    return data if isinstance(data, dict) else {}


def _version(obj: dict[str, Any]) -> int | None:
    value = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


# -- the watches --
class Monitor:
    """Watches one namespace's Jobs and pods of one agent, for the trackers registered.

    Started by the first tracker and stopped after the last one is done."""

    def __init__(self, cluster: Cluster, namespace: str, selector: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.selector = selector
        self.trackers: dict[str, Tracker] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def track(self, tracker: Tracker) -> None:
        self.trackers[tracker.name] = tracker
        if not self._tasks:
            self._tasks = [
                asyncio.ensure_future(self._watch("jobs", self._on_job)),
                asyncio.ensure_future(self._watch("pods", self._on_pod)),
            ]

    def forget(self, tracker: Tracker) -> None:
        if self.trackers.get(tracker.name) is tracker:
            del self.trackers[tracker.name]
        if not self.trackers:
            for task in self._tasks:
                task.cancel()
            self._tasks = []

    def _on_job(self, kind: str, obj: dict[str, Any]) -> None:
        tracker = self.trackers.get(str((obj.get("metadata") or {}).get("name")))
        if tracker is not None:
            tracker.on_job(kind, obj)

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        owner = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        tracker = self.trackers.get(str(owner))
        if tracker is not None:
            tracker.on_pod(kind, obj)

    async def _watch(self, what: str, handle: Callable[[str, dict[str, Any]], None]) -> None:
        """List, then watch from the list's version; resume after each end, list again
        when the version is too old (410). Errors are retried with backoff."""
        version: str | None = None
        failures = 0
        while True:
            try:
                api = await self.cluster.client()
                batch, core = batch_api(api), core_api(api)
                lister: Any = (
                    batch.list_namespaced_job if what == "jobs" else core.list_namespaced_pod
                )
                if version is None:
                    listing = await lister(self.namespace, label_selector=self.selector)
                    version = listing.metadata.resource_version
                    for item in listing.items:
                        handle("ADDED", to_dict(api, item))
                watcher = k8s_watch.Watch()
                async with watcher:
                    stream = watcher.stream(
                        lister,
                        self.namespace,
                        label_selector=self.selector,
                        resource_version=version,
                        timeout_seconds=WATCH_SECONDS,
                        allow_watch_bookmarks=True,
                        _request_timeout=(30, WATCH_SECONDS + 60),
                    )
                    async for event in stream:
                        version = watcher.resource_version or version
                        failures = 0
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            handle(event["type"], event["raw_object"])
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:
                    version = None  # too old: list again
                    continue
                failures += 1
                log.warning("watch of %s in %s failed (%s); retrying", what, self.namespace, exc)
                await asyncio.sleep(min(RETRY_CAP, 0.2 * 2**failures))
            except Exception as exc:
                failures += 1
                log.warning(
                    "watch of %s in %s broke (%s); resuming",
                    what,
                    self.namespace,
                    str(exc)[:200],
                )
                await asyncio.sleep(min(RETRY_CAP, 0.2 * 2**failures))


class Tracker:
    """One Job: its state from the watches' events, its pods' logs into the job folder,
    and `done`, resolved once with its final status (after its log is complete)."""

    def __init__(self, monitor: Monitor, name: str, log_path: Path, rewrite_log: bool) -> None:
        self.monitor = monitor
        self.name = name
        self.namespace = monitor.namespace
        self.log_path = log_path
        self.rewrite_log = rewrite_log
        self.done: concurrent.futures.Future[Status] = concurrent.futures.Future()
        self.state = RunState.STARTING
        self.cancelled = False
        self.job: dict[str, Any] | None = None
        self.gone = False
        self.pods: dict[str, dict[str, Any]] = {}  # alive
        self.seen: dict[str, dict[str, Any]] = {}  # every pod, as last seen
        self._logs: dict[str, asyncio.Task[None]] = {}
        self._last_log: asyncio.Task[None] | None = None
        self._finishing = False
        self._settling: asyncio.Task[None] | None = None
        self._warned = False
        self._deleting_pods: asyncio.Task[None] | None = None
        self._pod_events: dict[str, asyncio.Event] = {}
        self._log_gaps = False

    async def start(self) -> None:
        """Register with the watches, then read the Job and its pods once, so a tracker
        started late (a re-attach) knows what happened before its watch began."""
        self.monitor.track(self)
        try:
            api = await self.monitor.cluster.client()
            batch, core = batch_api(api), core_api(api)
            try:
                job = await batch.read_namespaced_job(self.name, self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self.on_job("DELETED", self.job or {"metadata": {"name": self.name}})
                return
            listing = await core.list_namespaced_pod(
                self.namespace, label_selector=self._pods_selector
            )
        except BaseException as exc:
            self.monitor.forget(self)
            if isinstance(exc, Exception):
                raise api_error(f"cannot read Job {self.name}", exc) from exc
            raise
        for pod in listing.items:
            self.on_pod("ADDED", to_dict(api, pod))
        self.on_job("ADDED", to_dict(api, job))

    @property
    def _pods_selector(self) -> str:
        return f"job-name={self.name}"

    # -- events --
    def on_job(self, kind: str, obj: dict[str, Any]) -> None:
        if self.job is not None and kind != "DELETED" and not _newer(obj, self.job):
            return
        if kind == "DELETED":
            self.gone = True
        self.job = obj if (obj.get("metadata") or {}).get("uid") or self.job is None else self.job
        self._evaluate()

    def on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        known = self.seen.get(name)
        if known is not None and kind != "DELETED" and not _newer(obj, known):
            return
        self.seen[name] = obj
        if name in self._pod_events:
            self._pod_events[name].set()
        if kind == "DELETED":
            self.pods.pop(name, None)
        else:
            self.pods[name] = obj
        if (k8s_status.has_started(obj) or k8s_status.is_pod_over(obj)) and name not in self._logs:
            self._logs[name] = asyncio.ensure_future(self._follow_log(name, self._last_log))
            self._last_log = self._logs[name]
        self._evaluate()

    def _evaluate(self) -> None:
        if self.done.done() or self._finishing or self.job is None:
            return
        job = self.job
        annotations = (job.get("metadata") or {}).get("annotations") or {}
        if CANCELLED_ANNOTATION in annotations:
            self.cancelled = True
        if k8s_status.job_succeeded(job):
            self._finish(lambda: Status(RunState.FINISHED, 0))
        elif k8s_status.job_failed(job):
            self._finish(self._failed_status, refresh=True)
        elif self.gone or k8s_status.is_deleting(job):
            live = [n for n, p in self.pods.items() if not k8s_status.is_pod_over(p)]
            if live:
                self.state = RunState.STOPPING
                if not self.cancelled and self._deleting_pods is None:
                    # Deleted by someone else: with the agent's finalizer on the Job, the
                    # garbage collector would wait for it; its pods go now.
                    self._deleting_pods = asyncio.ensure_future(self._delete_pods(live))
                return
            self._finish(self._deleted_status)
        else:
            for pod in self.pods.values():
                fatal = k8s_status.fatal_waiting(pod)
                if fatal is not None:
                    self._finish(functools.partial(Status, RunState.FAILED, None, fatal))
                    return
            started = any(k8s_status.has_started(p) for p in self.pods.values())
            self.state = RunState.RUNNING if started else RunState.STARTING
            self._warn_unschedulable()

    def _warn_unschedulable(self) -> None:
        """Say once why a pod waits for a node (it may wait until start_timeout)."""
        for pod in self.pods.values():
            conditions = (pod.get("status") or {}).get("conditions") or []
            for condition in conditions:
                unschedulable = condition.get("type") == "PodScheduled" and (
                    condition.get("reason") == "Unschedulable"
                )
                if unschedulable and not self._warned:
                    self._warned = True
                    log.warning(
                        "Job %s/%s: its pod cannot be scheduled yet: %s",
                        self.namespace,
                        self.name,
                        condition.get("message") or "no reason given",
                    )

    def _failed_status(self) -> Status:
        last = k8s_status.last_pod(list(self.seen.values()))
        if self.cancelled:
            return (
                k8s_status.pod_failure(last, cancelled=True) if last else Status(RunState.STOPPED)
            )
        assert self.job is not None
        return k8s_status.job_failure(self.job, last)

    def _deleted_status(self) -> Status:
        """A Job deleted before it ended: stopped if the agent did it; else finished if its
        pod had succeeded, preempted if its pod was disrupted (a drain), else failed."""
        last = k8s_status.last_pod(list(self.seen.values()))
        if self.cancelled:
            return (
                k8s_status.pod_failure(last, cancelled=True) if last else Status(RunState.STOPPED)
            )
        code = (k8s_status.terminated(last) or {}).get("exitCode") if last else None
        if last is not None and (last.get("status") or {}).get("phase") == "Succeeded":
            return Status(RunState.FINISHED, code)
        if last is not None and k8s_status.disruption(last):
            return k8s_status.pod_failure(last)
        return Status(RunState.FAILED, code, "the Job was deleted by someone else")

    async def _delete_pods(self, names: list[str]) -> None:
        with contextlib.suppress(Exception):
            core = core_api(await self.monitor.cluster.client())
            for name in names:
                with contextlib.suppress(ApiException):
                    await core.delete_namespaced_pod(name, self.namespace)

    def _finish(self, decide: Callable[[], Status], refresh: bool = False) -> None:
        self._finishing = True
        self.state = RunState.STOPPING
        self._settling = asyncio.ensure_future(self._settle(decide, refresh))

    async def _settle(self, decide: Callable[[], Status], refresh: bool) -> None:
        try:
            if refresh:  # the pod watch may lag the Job's: read the pods' last word
                with contextlib.suppress(Exception):
                    api = await self.monitor.cluster.client()
                    listing = await core_api(api).list_namespaced_pod(
                        self.namespace, label_selector=self._pods_selector
                    )
                    for pod in listing.items:
                        data = to_dict(api, pod)
                        self.seen[str(data["metadata"]["name"])] = data
            status = decide()
            pending = [t for t in self._logs.values() if not t.done()]
            if pending:
                await asyncio.wait(pending, timeout=LOG_SETTLE)
            if self._log_gaps:
                await self._reread_logs()
        except Exception as exc:  # never leave a waiter hanging
            log.exception("job %s: lost track of it", self.name)
            status = Status(RunState.FAILED, None, f"lost track of the Kubernetes Job: {exc}")
        self.state = status.state
        if not self.done.done():
            self.done.set_result(status)
        self.monitor.forget(self)

    # -- logs --
    async def _follow_log(self, pod: str, previous: Awaitable[None] | None) -> None:
        """Copy the pod's log (its job container's) into the job folder as it comes, in
        pod order. A re-attached job's log is written anew from the pod's first line. A
        stream cut while the container runs is followed again from then on, and the gap
        is filled when the job ends (`_reread_logs`)."""
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        tail: int | None = None
        while True:
            await self._copy_log(pod, follow=True, tail=tail)
            if self._pod_done(pod):
                return
            changed = self._pod_events.setdefault(pod, asyncio.Event())
            changed.clear()  # the stream may have ended with the container: its event comes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), LOG_RETRY)
            if self._pod_done(pod):
                return
            log.info("job %s: log stream of pod %s was cut; following it again", self.name, pod)
            self._log_gaps = True
            tail = 0

    def _pod_done(self, pod: str) -> bool:
        latest = self.seen.get(pod, {})
        return (
            self.done.done()
            or pod not in self.pods
            or k8s_status.is_pod_over(latest)
            or k8s_status.terminated(latest) is not None
        )

    async def _copy_log(self, pod: str, follow: bool, tail: int | None) -> None:
        try:
            api = await self.monitor.cluster.client()
            container = k8s_status.main_container(self.seen.get(pod, {}))
            kwargs: dict[str, Any] = {"follow": follow, "_preload_content": False}
            if container:
                kwargs["container"] = container
            if tail is not None:
                kwargs["tail_lines"] = tail
            response = await core_api(api).read_namespaced_pod_log(pod, self.namespace, **kwargs)
            async with response:
                if response.status != 200:
                    log.info("job %s: no log for pod %s (%s)", self.name, pod, response.status)
                    return
                mode = "wb" if self.rewrite_log else "ab"
                self.rewrite_log = False
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with self.log_path.open(mode) as out:
                    async for chunk in response.content.iter_any():
                        out.write(chunk)
                        out.flush()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("job %s: log stream of pod %s ended early: %s", self.name, pod, exc)

    async def _reread_logs(self) -> None:
        """After a cut stream: the whole log of each pod, read again, replaces the file.
        Left as it is if any pod's log cannot be read (it was deleted)."""
        try:
            api = await self.monitor.cluster.client()
            order = sorted(
                self.seen.values(),
                key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""),
            )
            parts = []
            for pod in order:
                name = str(pod["metadata"]["name"])
                if name not in self._logs:
                    continue
                kwargs: dict[str, Any] = {"_preload_content": False}
                container = k8s_status.main_container(pod)
                if container:
                    kwargs["container"] = container
                response = await core_api(api).read_namespaced_pod_log(
                    name, self.namespace, **kwargs
                )
                async with response:
                    if response.status != 200:
                        return
                    parts.append(await response.read())
            self.log_path.write_bytes(b"".join(parts))
        except Exception as exc:
            log.warning("job %s: could not read its whole log again: %s", self.name, exc)

    # -- actions --
    async def cancel(self, grace: float) -> None:
        """Mark the Job cancelled, delete it (foreground: its pods first), and give its
        pods `grace` seconds between SIGTERM and SIGKILL."""
        self.cancelled = True
        seconds = max(0, round(grace))
        api = await self.monitor.cluster.client()
        batch, core = batch_api(api), core_api(api)
        try:
            await batch.patch_namespaced_job(
                self.name,
                self.namespace,
                {"metadata": {"annotations": {CANCELLED_ANNOTATION: f"{time.time():.3f}"}}},
                _content_type=MERGE_PATCH,
            )
            await batch.delete_namespaced_job(
                self.name,
                self.namespace,
                body={"propagationPolicy": "Foreground", "gracePeriodSeconds": seconds},
            )
        except ApiException as exc:
            if exc.status != 404:
                raise api_error(f"cannot delete Job {self.name}", exc) from exc
            self.on_job("DELETED", self.job or {"metadata": {"name": self.name}})
        for name in list(self.pods):
            with contextlib.suppress(ApiException):
                await core.delete_namespaced_pod(
                    name, self.namespace, body={"gracePeriodSeconds": seconds}
                )


def _newer(obj: dict[str, Any], than: dict[str, Any]) -> bool:
    new, old = _version(obj), _version(than)
    return new is None or old is None or new >= old


async def release(
    cluster: Cluster, namespace: str, name: str, secret: str | None, delete: bool
) -> None:
    """After the item is settled: drop the agent's finalizer (and delete the Job unless
    asked to keep it), and delete the job's Secret."""
    api = await cluster.client()
    batch, core = batch_api(api), core_api(api)
    try:
        if delete:
            with contextlib.suppress(ApiException):
                await batch.delete_namespaced_job(
                    name, namespace, body={"propagationPolicy": "Background"}
                )
        for _ in range(5):
            job = to_dict(api, await batch.read_namespaced_job(name, namespace))
            finalizers = (job.get("metadata") or {}).get("finalizers") or []
            if FINALIZER not in finalizers:
                break
            index = finalizers.index(FINALIZER)
            patch = [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ]
            try:
                await batch.patch_namespaced_job(name, namespace, patch)
                break
            except ApiException as exc:
                if exc.status not in (409, 422):  # someone changed the list: read it again
                    raise
    except ApiException as exc:
        if exc.status != 404:
            raise api_error(f"cannot release Job {name}", exc) from exc
    if secret is not None:
        try:
            await core.delete_namespaced_secret(secret, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise api_error(f"cannot delete Secret {secret}", exc) from exc
