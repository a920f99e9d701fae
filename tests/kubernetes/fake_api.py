"""A fake Kubernetes API server for the tests: the REST paths the runner uses, played
faithfully, with the pods' containers run on the local Docker engine.

No cluster can run on these machines, so this server plays one: Jobs, Pods, Secrets over
`/apis/batch/v1` and `/api/v1`, list and watch (chunked JSON event streams from a
resourceVersion, `410 Gone` for one that was compacted away), pod logs (followed),
deletes with propagation (Foreground, Background) and finalizers, the Eviction
subresource, merge and JSON patches. Every request body is validated against the official
OpenAPI schema of its kind (kubernetes-validate, strict: an unknown field is refused with
422, as a real API server with strict field validation does), and so is every object the
server stores, so the fake cannot drift from the real shapes unnoticed.

It plays the controllers too: the Job controller makes a pod from the template
(`job-name` labels, an ownerReference), counts its end against `backoffLimit` and sets the
Job's conditions (`SuccessCriteriaMet`/`Complete`, `FailureTarget`/`Failed`); the kubelet
resolves the pod's env (`secretKeyRef` from the Secret), runs its first container on
Docker (command = ENTRYPOINT, args = CMD, env, memory and CPU limits), so the output and
exit code are real, and reports Pending -> Running -> Succeeded/Failed, `OOMKilled`, or
`ErrImagePull`/`ImagePullBackOff` for an image the engine does not have (nothing is
pulled). Deleting a pod stops its container (SIGTERM, SIGKILL after the grace period);
the garbage collector deletes what a deleted Job owned.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import copy
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.kubernetes.schema import problems, schema_of

TOKEN = "fake-cluster-token"
SECRET_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
KINDS = {"jobs": ("batch/v1", "Job"), "pods": ("v1", "Pod"), "secrets": ("v1", "Secret")}
_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantity_bytes(value: Any) -> int:
    text = str(value)
    for unit, factor in _UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(float(text))


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def check_labels(path: str, labels: Any) -> None:
    """The API server's label rules: `[prefix/]name`, name and value at most 63 characters."""
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if (prefix and (not SECRET_RE.fullmatch(prefix) or len(prefix) > 253)) or not (
            LABEL_NAME.fullmatch(name) and len(name) <= 63
        ):
            raise ApiError(422, "Invalid", f"{path}: Invalid value: {key!r}: not a label key")
        if len(str(value)) > 63 or not LABEL_VALUE.fullmatch(str(value)):
            raise ApiError(
                422, "Invalid", f"{path}.{key}: Invalid value: {value!r}: not a label value"
            )


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(selector: str, obj: dict[str, Any]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if key == "metadata.name" and obj["metadata"]["name"] != value:
            return False
        if key == "metadata.namespace" and obj["metadata"]["namespace"] != value:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 JSON patch (test, add, remove, replace); a failed test is a 422."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        key: Any = int(last) if isinstance(parent, list) and last != "-" else last
        kind = op["op"]
        try:
            if kind == "test":
                if parent[key] != op["value"]:
                    raise ApiError(422, "Invalid", f"test failed at {op['path']}")
            elif kind == "remove":
                del parent[key]
            elif kind == "replace":
                parent[key] = op["value"]
            elif kind == "add":
                if isinstance(parent, list):
                    parent.insert(len(parent) if key == "-" else key, op["value"])
                else:
                    parent[key] = op["value"]
            else:
                raise ApiError(400, "BadRequest", f"unsupported patch op {kind}")
        except (KeyError, IndexError) as exc:
            raise ApiError(422, "Invalid", f"patch path {op['path']} not found") from exc
    return doc


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class _Watcher:
    kind: str
    namespace: str
    labels: str
    fields: str
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = field(default_factory=asyncio.Queue)

    def wants(self, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        return (
            meta.get("namespace") == self.namespace
            and _selector_matches(self.labels, meta.get("labels") or {})
            and _fields_match(self.fields, obj)
        )


class FakeKube:
    """The server. `start()` returns its URL; `kubeconfig(path)` writes a config for it."""

    def __init__(self, docker_client: Any, tag: str, namespace: str = "jobs") -> None:
        self.docker = docker_client
        self.tag = tag
        self.namespace = namespace
        self.requests: list[Request] = []
        self.rejected: list[tuple[Request, str]] = []
        self.errors: list[str] = []  # the fake's own failures: every test checks none
        self._store: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in KINDS}
        self._history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {k: [] for k in KINDS}
        self._compacted = 0
        self._rv = 0
        self._watchers: list[_Watcher] = []
        self._changed: asyncio.Condition | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._containers: dict[tuple[str, str], str] = {}  # pod -> docker container id
        self._log_streams: list[asyncio.Queue[bytes | None]] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="fake-kube")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- life --
    def start(self) -> str:
        self._thread.start()
        self.url = self.call(self._start())
        return self.url

    async def _start(self) -> str:
        self._changed = asyncio.Condition()
        app = web.Application(client_max_size=8 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self._stop(), timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        for listed in self.docker.api.containers(
            all=True, filters={"label": [f"fake-kube={self.tag}"]}
        ):
            with contextlib.suppress(Exception):
                self.docker.api.remove_container(listed["Id"], force=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _stop(self) -> None:
        await self._end_watches()
        await asyncio.sleep(0)
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop from a test."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def kubeconfig(self, path: Path, context_namespace: str | None = None) -> Path:
        namespace = context_namespace or self.namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": TOKEN}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "tester", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))
        return path

    # -- what tests look at --
    def objects(self, kind: str) -> list[dict[str, Any]]:
        return self.call(self._list_now(kind))

    async def _list_now(self, kind: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self._store[kind].values()]

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.call(self._get_now(kind, name, namespace or self.namespace))

    async def _get_now(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        found = self._store[kind].get((namespace, name))
        return copy.deepcopy(found) if found else None

    def compact(self) -> None:
        """Forget the event history: a watch resumed from an older version gets 410 Gone."""
        self.call(self._compact())

    async def _compact(self) -> None:
        self._compacted = self._rv
        for kind in self._history:
            self._history[kind] = []

    def end_watches(self) -> None:
        """Close every open watch (as an API server does when it restarts or times out)."""
        self.call(self._end_watches())

    async def _end_watches(self) -> None:
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(("END", {}))

    def running_pods(self, **labels: str) -> list[dict[str, Any]]:
        """Pods whose container runs, with these `launch-agent/<key>` labels."""
        found = []
        for pod in self.objects("pods"):
            have = pod["metadata"].get("labels") or {}
            wanted = all(have.get(f"launch-agent/{k}") == v for k, v in labels.items())
            if wanted and pod["status"].get("phase") == "Running":
                found.append(pod)
        return found

    def touch(self, pod_name: str, path: str) -> None:
        """Create a file in a pod's running container (`kubectl exec ... touch`): how a
        test lets a job that waits for it go on."""
        container_id = self.call(self._container_of(pod_name))
        exec_id = self.docker.api.exec_create(container_id, ["touch", path])
        self.docker.api.exec_start(exec_id)

    async def _container_of(self, pod_name: str) -> str:
        for (_namespace, name), container_id in self._containers.items():
            if name == pod_name:
                return container_id
        raise KeyError(pod_name)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A request as a client would send it (a test playing `kubectl`)."""
        return self.send("POST", path, body)

    def send(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def bodies_text(self) -> str:
        """Every request body this server received, as one text (for secret checks)."""
        return "\n".join(json.dumps(r.body) for r in self.requests if r.body is not None)

    # -- the store --
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def _check_stored(self, kind: str, obj: dict[str, Any]) -> None:
        found = problems(obj, schema_of(obj))
        if found:  # the fake itself made a wrong object: a bug in the test server
            raise AssertionError(f"fake API server stored an invalid {kind}: {found}")

    async def _put(self, kind: str, obj: dict[str, Any], event: str = "MODIFIED") -> dict[str, Any]:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._check_stored(kind, obj)
        meta = obj["metadata"]
        self._store[kind][(meta["namespace"], meta["name"])] = obj
        self._emit(kind, event, obj)
        await self._notify()
        return obj

    async def _remove(self, kind: str, namespace: str, name: str) -> None:
        obj = self._store[kind].pop((namespace, name), None)
        if obj is None:
            return
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(kind, "DELETED", obj)
        await self._notify()
        uid = obj["metadata"]["uid"]
        for dependent_kind in ("pods", "secrets"):  # the garbage collector
            for dependent in list(self._store[dependent_kind].values()):
                owners = dependent["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners):
                    await self._delete(dependent_kind, namespace, dependent["metadata"]["name"], {})

    def _emit(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        snapshot = copy.deepcopy(obj)
        self._history[kind].append((self._rv, event, snapshot))
        for watcher in self._watchers:
            if watcher.kind == kind and watcher.wants(snapshot):
                watcher.queue.put_nowait((event, snapshot))

    async def _wait_change(self, predicate: Callable[[], bool]) -> None:
        assert self._changed is not None
        async with self._changed:
            await self._changed.wait_for(predicate)

    # -- HTTP --
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body: Any = None
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return self._error(400, "BadRequest", "body is not JSON")
        record = Request(request.method, request.path, dict(request.query), body)
        self.requests.append(record)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._error(401, "Unauthorized", "Unauthorized")
        try:
            return await self._route(request, body, record)
        except ApiError as exc:
            if exc.code == 422:
                self.rejected.append((record, exc.message))
            return self._error(exc.code, exc.reason, exc.message)
        except Exception as exc:  # a bug in the fake: say so loudly
            self.errors.append(f"{record.method} {record.path}: {exc!r}")
            raise

    def _error(self, code: int, reason: str, message: str) -> web.Response:
        return web.json_response(status_body(code, reason, message), status=code)

    def _validate(self, body: Any, schema: str, record: Request) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        found = problems(body, schema)
        if found:
            raise ApiError(422, "Invalid", f"{schema} is invalid: " + "; ".join(found))

    async def _route(self, request: web.Request, body: Any, record: Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        match = re.fullmatch(
            r"/(?:api/v1|apis/batch/v1)/namespaces/([^/]+)/(jobs|pods|secrets)(?:/([^/]+))?(?:/(log|eviction|status))?",
            path,
        )
        if match is None:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        namespace, kind, name, sub = match.groups()
        group = "apis/batch/v1" if kind == "jobs" else "api/v1"
        if not path.startswith(f"/{group}/"):
            raise ApiError(404, "NotFound", f"{kind} are not served under this group")
        method = request.method
        if name is None:
            if method == "GET":
                if request.query.get("watch", "").lower() in ("true", "1"):
                    return await self._watch(request, kind, namespace)
                return web.json_response(self._list(kind, namespace, request.query))
            if method == "POST":
                created = await self._create(kind, namespace, body, record)
                return web.json_response(created, status=201)
            raise ApiError(405, "MethodNotAllowed", method)
        if sub == "log":
            return await self._log(request, namespace, name)
        if sub == "eviction":
            self._validate(body, "eviction-policy-v1", record)
            await self._evict(namespace, name, body)
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}},
                status=201,
            )
        current = self._store[kind].get((namespace, name))
        if method == "GET":
            if current is None:
                raise ApiError(404, "NotFound", f'{kind} "{name}" not found')
            return web.json_response(current)
        if current is None:
            raise ApiError(404, "NotFound", f'{kind} "{name}" not found')
        if method == "DELETE":
            if body is not None:
                self._validate(body, "deleteoptions-meta-v1", record)
            result = await self._delete(kind, namespace, name, body or {})
            return web.json_response(result)
        if method == "PATCH":
            updated = await self._patch(kind, current, body, request.content_type, record)
            return web.json_response(updated)
        if method == "PUT":
            self._validate(body, schema_of(body), record)
            updated = self._admit(kind, namespace, copy.deepcopy(body), current)
            return web.json_response(await self._put(kind, updated))
        raise ApiError(405, "MethodNotAllowed", method)

    def _list(self, kind: str, namespace: str, query: Any) -> dict[str, Any]:
        labels, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
        watcher = _Watcher(kind, namespace, labels, fields)
        items = [copy.deepcopy(o) for o in self._store[kind].values() if watcher.wants(o)]
        api_version, kind_name = KINDS[kind]
        return {
            "apiVersion": api_version,
            "kind": f"{kind_name}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    async def _watch(self, request: web.Request, kind: str, namespace: str) -> web.StreamResponse:
        query = request.query
        watcher = _Watcher(
            kind, namespace, query.get("labelSelector", ""), query.get("fieldSelector", "")
        )
        since = query.get("resourceVersion")
        timeout = float(query.get("timeoutSeconds", "1800"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if since not in (None, "", "0") and int(since) < self._compacted:
            gone = status_body(
                410, "Expired", f"too old resource version: {since} ({self._compacted})"
            )
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        if since in (None, "", "0"):
            backlog = [("ADDED", copy.deepcopy(o)) for o in self._store[kind].values()]
        else:
            backlog = [(e, o) for rv, e, o in self._history[kind] if rv > int(since)]
        self._watchers.append(watcher)  # no await since the backlog: nothing is missed
        try:
            for event, obj in backlog:
                if watcher.wants(obj):
                    await response.write(
                        json.dumps({"type": event, "object": obj}).encode() + b"\n"
                    )
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    event, obj = await asyncio.wait_for(watcher.queue.get(), left)
                except TimeoutError:
                    break
                if event == "END":
                    break
                await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.remove(watcher)
        return response

    # -- create, admit, patch, delete --
    async def _create(
        self, kind: str, namespace: str, body: Any, record: Request
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        self._validate(body, schema_of(body), record)
        if (body.get("apiVersion"), body.get("kind")) != KINDS[kind]:
            raise ApiError(400, "BadRequest", f"expected {KINDS[kind]}, got {body.get('kind')}")
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") not in (None, namespace):
            raise ApiError(
                400, "BadRequest", "the namespace of the object does not match the request's"
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{secrets.token_hex(3)[:5]}"
        name = meta.get("name")
        if not isinstance(name, str) or not SECRET_RE.fullmatch(name) or len(name) > 253:
            raise ApiError(422, "Invalid", f"metadata.name: Invalid value: {name!r}")
        if kind == "jobs" and (not DNS_LABEL.fullmatch(name) or len(name) > 63):
            raise ApiError(
                422, "Invalid", f"metadata.name: a Job's name must be a DNS label: {name!r}"
            )
        if (namespace, name) in self._store[kind]:
            raise ApiError(409, "AlreadyExists", f'{kind} "{name}" already exists')
        obj = self._admit(kind, namespace, copy.deepcopy(body), None)
        obj["metadata"]["uid"] = uid = str(uuid.uuid4())
        obj["metadata"]["creationTimestamp"] = now()
        if kind == "jobs":
            labels = obj["spec"]["template"]["metadata"]["labels"]
            labels["batch.kubernetes.io/controller-uid"] = labels["controller-uid"] = uid
        stored = await self._put(kind, obj, "ADDED")
        if kind == "jobs":
            self._spawn(self._job_controller(namespace, name))
        return copy.deepcopy(stored)

    def _admit(
        self, kind: str, namespace: str, obj: dict[str, Any], current: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Defaults and server-side checks the schema cannot express."""
        meta = obj["metadata"]
        meta["namespace"] = namespace
        check_labels("metadata.labels", meta.get("labels"))
        template_meta = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        check_labels("spec.template.metadata.labels", template_meta.get("labels"))
        if current is not None:
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
                if key in current["metadata"]:
                    meta[key] = current["metadata"][key]
        if kind == "secrets":
            data = dict(obj.get("data") or {})
            for key, value in (obj.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(value.encode()).decode()
            obj["data"] = data
            obj.setdefault("type", "Opaque")
        if kind == "jobs":
            spec = obj["spec"]
            pod = spec["template"]["spec"]
            if pod.get("restartPolicy") not in ("Never", "OnFailure"):
                raise ApiError(
                    422,
                    "Invalid",
                    "spec.template.spec.restartPolicy: Unsupported value: only Never or OnFailure",
                )
            if current is not None:
                obj["spec"] = current["spec"]  # a Job's pod template cannot change
                obj["status"] = obj.get("status") or current.get("status") or {}
                return obj
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            labels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
            labels.update(
                {
                    "batch.kubernetes.io/job-name": meta["name"],
                    "job-name": meta["name"],
                }
            )
            obj["status"] = {}
        return obj

    async def _patch(
        self, kind: str, current: dict[str, Any], body: Any, content_type: str, record: Request
    ) -> dict[str, Any]:
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
            updated = json_patch(current, body)
        elif content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            updated = merge_patch(current, body)
        else:
            raise ApiError(415, "UnsupportedMediaType", content_type)
        self._validate(updated, schema_of(updated), record)
        for key in ("uid", "name", "namespace", "creationTimestamp"):
            if updated["metadata"].get(key) != current["metadata"].get(key):
                raise ApiError(422, "Invalid", f"metadata.{key}: field is immutable")
        if kind == "jobs" and updated["spec"] != current["spec"]:
            template_changed = updated["spec"].get("template") != current["spec"].get("template")
            if template_changed:
                raise ApiError(422, "Invalid", "spec.template: field is immutable")
        stored = await self._put(kind, updated)
        await self._maybe_finalize(kind, stored)
        return copy.deepcopy(stored)

    async def _delete(
        self, kind: str, namespace: str, name: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        current = self._store[kind].get((namespace, name))
        if current is None:
            raise ApiError(404, "NotFound", f'{kind} "{name}" not found')
        if kind == "pods":
            grace = options.get("gracePeriodSeconds")
            if grace is None:
                grace = current["spec"].get("terminationGracePeriodSeconds", 30)
            await self._delete_pod(current, int(grace))
            return copy.deepcopy(current)
        policy = options.get("propagationPolicy") or "Background"
        meta = current["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if not finalizers:
            await self._remove(kind, namespace, name)
            return copy.deepcopy(current)
        if not meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = now()
            meta["deletionGracePeriodSeconds"] = 0
        meta["finalizers"] = finalizers
        stored = await self._put(kind, current)
        if "foregroundDeletion" in finalizers:
            self._spawn(self._foreground(kind, namespace, name, meta["uid"]))
        return copy.deepcopy(stored)

    async def _foreground(self, kind: str, namespace: str, name: str, uid: str) -> None:
        """The garbage collector's foreground deletion: dependents first, then the owner."""

        def dependents() -> list[tuple[str, dict[str, Any]]]:
            return [
                (k, o)
                for k in ("pods", "secrets")
                for o in self._store[k].values()
                if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
            ]

        for dependent_kind, dependent in dependents():
            if not dependent["metadata"].get("deletionTimestamp"):
                await self._delete(dependent_kind, namespace, dependent["metadata"]["name"], {})
        await self._wait_change(lambda: not dependents())
        current = self._store[kind].get((namespace, name))
        if current is None:
            return
        current["metadata"]["finalizers"] = [
            f for f in current["metadata"].get("finalizers") or [] if f != "foregroundDeletion"
        ]
        stored = await self._put(kind, current)
        await self._maybe_finalize(kind, stored)

    async def _maybe_finalize(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._remove(kind, meta["namespace"], meta["name"])

    # -- the Job controller --
    async def _job_controller(self, namespace: str, name: str) -> None:
        failures = 0
        while True:
            job = self._store["jobs"].get((namespace, name))
            if job is None or job["metadata"].get("deletionTimestamp"):
                return
            job["status"].setdefault("startTime", now())
            job["status"]["active"] = 1
            job["status"]["ready"] = 0
            await self._put("jobs", job)
            phase = await self._kubelet(await self._new_pod(job))
            job = self._store["jobs"].get((namespace, name))
            if job is None or job["metadata"].get("deletionTimestamp"):
                return
            status = job["status"]
            status["active"] = 0
            status["ready"] = 0
            if phase == "Succeeded":
                status["succeeded"] = 1
                status["completionTime"] = now()
                status["conditions"] = [
                    self._condition(
                        "SuccessCriteriaMet",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ),
                    self._condition(
                        "Complete",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ),
                ]
                await self._put("jobs", job)
                return
            failures += 1
            status["failed"] = failures
            if failures > int(job["spec"].get("backoffLimit", 6)):
                message = "Job has reached the specified backoff limit"
                status["conditions"] = [
                    self._condition("FailureTarget", "BackoffLimitExceeded", message),
                    self._condition("Failed", "BackoffLimitExceeded", message),
                ]
                await self._put("jobs", job)
                return
            await self._put("jobs", job)

    @staticmethod
    def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
        stamp = now()
        return {
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastProbeTime": stamp,
            "lastTransitionTime": stamp,
        }

    async def _new_pod(self, job: dict[str, Any]) -> dict[str, Any]:
        template = copy.deepcopy(job["spec"]["template"])
        meta = template.get("metadata") or {}
        name = f"{job['metadata']['name'][:57]}-{secrets.token_hex(3)[:5]}"
        uid = job["metadata"]["uid"]
        labels = dict(meta.get("labels") or {})
        labels["batch.kubernetes.io/controller-uid"] = uid
        labels["controller-uid"] = uid
        spec = template["spec"]
        spec["nodeName"] = "fake-node"
        spec.setdefault("terminationGracePeriodSeconds", 30)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": job["metadata"]["namespace"],
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now(),
                "labels": labels,
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job["metadata"]["name"],
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
            "status": {
                "phase": "Pending",
                "conditions": [self._pod_condition("PodScheduled")],
                "containerStatuses": [
                    self._waiting(c, "ContainerCreating", None) for c in spec["containers"]
                ],
            },
        }
        return await self._put("pods", pod, "ADDED")

    @staticmethod
    def _pod_condition(
        kind: str, status: str = "True", reason: str | None = None, message: str | None = None
    ) -> dict[str, Any]:
        condition: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": now()}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        return condition

    @staticmethod
    def _waiting(container: dict[str, Any], reason: str, message: str | None) -> dict[str, Any]:
        waiting: dict[str, Any] = {"reason": reason}
        if message:
            waiting["message"] = message
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "state": {"waiting": waiting},
        }

    # -- the kubelet --
    def _pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._store["pods"].get((namespace, name))

    async def _set_pod(self, pod: dict[str, Any], **status: Any) -> dict[str, Any] | None:
        meta = pod["metadata"]
        current = self._pod(meta["namespace"], meta["name"])
        if current is None:
            return None
        current["status"].update(status)
        return await self._put("pods", current)

    async def _kubelet(self, pod: dict[str, Any]) -> str:
        """Run the pod's first container on Docker; its final phase ('Deleted' if it was
        deleted before it could start)."""
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]

        def deleting() -> bool:
            current = self._pod(namespace, name)
            return current is None or bool(current["metadata"].get("deletionTimestamp"))

        env = await self._resolve_env(pod, container, deleting)
        if env is None:
            await self._remove("pods", namespace, name)
            return "Deleted"
        image = container["image"]
        if not await self._image_present(image):
            message = (
                "rpc error: code = NotFound desc = failed to pull and unpack image "
                f'"{image}": not found'
            )
            await self._set_pod(
                pod, containerStatuses=[self._waiting(container, "ErrImagePull", message)]
            )
            back_off = f'Back-off pulling image "{image}": ErrImagePull: {message}'
            await self._set_pod(
                pod, containerStatuses=[self._waiting(container, "ImagePullBackOff", back_off)]
            )
            await self._wait_change(deleting)
            await self._remove("pods", namespace, name)
            return "Deleted"
        if deleting():
            await self._remove("pods", namespace, name)
            return "Deleted"
        container_id = await self._run_in_pool(self._docker_start, pod, container, env)
        self._containers[(namespace, name)] = container_id
        started = now()
        running = {
            "name": container["name"],
            "image": image,
            "imageID": f"docker-pullable://{image}",
            "containerID": f"docker://{container_id}",
            "ready": True,
            "restartCount": 0,
            "started": True,
            "state": {"running": {"startedAt": started}},
        }
        await self._set_pod(
            pod,
            phase="Running",
            startTime=started,
            conditions=[
                self._pod_condition(t)
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            containerStatuses=[running],
        )
        code, oom = await self._run_in_pool(self._docker_wait, container_id)
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        ended = dict(running, ready=False, started=False)
        ended["state"] = {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": started,
                "finishedAt": now(),
                "containerID": f"docker://{container_id}",
            }
        }
        phase = "Succeeded" if code == 0 else "Failed"
        current = self._pod(namespace, name)
        conditions = [
            c for c in (current or pod)["status"].get("conditions") or [] if c["type"] != "Ready"
        ]
        conditions.append(self._pod_condition("Ready", "False", "PodCompleted"))
        await self._set_pod(pod, phase=phase, conditions=conditions, containerStatuses=[ended])
        if deleting():
            await self._remove("pods", namespace, name)
        return phase

    async def _resolve_env(
        self, pod: dict[str, Any], container: dict[str, Any], deleting: Callable[[], bool]
    ) -> dict[str, str] | None:
        """The container's env; a missing Secret holds the pod in CreateContainerConfigError
        until it appears (or the pod is deleted: None)."""
        namespace = pod["metadata"]["namespace"]
        while True:
            env: dict[str, str] = {}
            missing = None
            for entry in container.get("env") or []:
                if "value" in entry:
                    env[entry["name"]] = str(entry["value"])
                    continue
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef") or {}
                secret = self._store["secrets"].get((namespace, ref.get("name", "")))
                data = (secret or {}).get("data") or {}
                if ref.get("key") not in data:
                    missing = (
                        f'secret "{ref.get("name")}" not found or has no key {ref.get("key")!r}'
                    )
                    break
                env[entry["name"]] = base64.b64decode(data[ref["key"]]).decode()
            if missing is None:
                return env
            await self._set_pod(
                pod,
                containerStatuses=[self._waiting(container, "CreateContainerConfigError", missing)],
            )
            version = self._rv
            await self._wait_change(lambda v=version: self._rv > v)
            if deleting():
                return None

    async def _run_in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _image_present(self, image: str) -> bool:
        import docker.errors

        def check() -> bool:
            try:
                self.docker.images.get(image)
            except docker.errors.ImageNotFound:
                return False
            return True

        return bool(await self._run_in_pool(check))

    def _docker_start(
        self, pod: dict[str, Any], container: dict[str, Any], env: dict[str, str]
    ) -> str:
        kwargs: dict[str, Any] = {
            "environment": env,
            "labels": {"fake-kube": self.tag, "fake-kube.pod": pod["metadata"]["name"]},
            "network_mode": "none",
            "detach": True,
        }
        if container.get("command"):
            kwargs["entrypoint"] = container["command"]
            kwargs["command"] = container.get("args") or []
        elif container.get("args"):
            kwargs["command"] = container["args"]
        if container.get("workingDir"):
            kwargs["working_dir"] = container["workingDir"]
        limits = (container.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            kwargs["mem_limit"] = kwargs["memswap_limit"] = quantity_bytes(limits["memory"])
        if "cpu" in limits:
            cpu = str(limits["cpu"])
            kwargs["nano_cpus"] = (
                int(float(cpu[:-1]) * 1e6) if cpu.endswith("m") else int(float(cpu) * 1e9)
            )
        created = self.docker.containers.create(container["image"], **kwargs)
        created.start()
        return str(created.id)

    def _docker_wait(self, container_id: str) -> tuple[int, bool]:
        result = self.docker.api.wait(container_id)
        state = self.docker.api.inspect_container(container_id)["State"]
        return int(result.get("StatusCode", -1)), bool(state.get("OOMKilled"))

    async def _delete_pod(self, pod: dict[str, Any], grace: int) -> None:
        """Graceful deletion: mark it, then SIGTERM its container, SIGKILL after `grace`.
        A pod whose container never started goes at once."""
        meta = pod["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if not meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = now()
            meta["deletionGracePeriodSeconds"] = grace
            await self._put("pods", pod)
        container_id = self._containers.get((namespace, name))
        if pod["status"].get("phase") in ("Succeeded", "Failed"):
            await self._remove("pods", namespace, name)
        elif container_id is not None:
            self._spawn(self._run_in_pool(self._docker_stop, container_id, grace))
        # A pod still pending is removed by its kubelet task, which sees the deletion.

    def _docker_stop(self, container_id: str, grace: int) -> None:
        with contextlib.suppress(Exception):
            self.docker.api.stop(container_id, timeout=grace)

    async def _evict(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        pod = self._pod(namespace, name)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        conditions = list(pod["status"].get("conditions") or [])
        conditions.append(
            self._pod_condition(
                "DisruptionTarget", "True", "EvictionByEvictionAPI", "Eviction API: evicting"
            )
        )
        pod["status"]["conditions"] = conditions
        await self._put("pods", pod)
        options = body.get("deleteOptions") or {}
        grace = options.get(
            "gracePeriodSeconds", pod["spec"].get("terminationGracePeriodSeconds", 30)
        )
        await self._delete_pod(pod, int(grace))

    # -- logs --
    async def _log(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        pod = self._pod(namespace, name)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        container_id = self._containers.get((namespace, name))
        if container_id is None:
            raise ApiError(400, "BadRequest", f'container in pod "{name}" is waiting to start')
        follow = request.query.get("follow", "").lower() in ("true", "1")
        tail = request.query.get("tailLines")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

        def pump() -> None:
            try:
                kwargs: dict[str, Any] = {"stream": True, "follow": follow}
                if tail is not None:
                    kwargs["tail"] = int(tail)
                for chunk in self.docker.api.logs(container_id, **kwargs):
                    loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except Exception:
                pass
            finally:
                loop.call_soon_threadsafe(chunks.put_nowait, None)

        self._pool.submit(pump)
        self._log_streams.append(chunks)
        try:
            with contextlib.suppress(ConnectionResetError):
                while (chunk := await chunks.get()) is not None:
                    await response.write(chunk)
        finally:
            self._log_streams.remove(chunks)
        return response

    def cut_log_streams(self) -> int:
        """End every followed log stream now (a network blip, an API server restart);
        how many there were."""
        return int(self.call(self._cut_log_streams()))

    async def _cut_log_streams(self) -> int:
        for chunks in self._log_streams:
            chunks.put_nowait(None)
        return len(self._log_streams)
