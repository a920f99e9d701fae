"""A local stand-in for W&B's GraphQL API, for the W&B backend's tests.

Every request is parsed and validated with graphql-core against `SCHEMA` (the reference's
PART A, W&B's published types, plus tests/wandb/schema-additions.graphql: what its 0.31
client sends beyond them), then executed by resolvers that
answer as W&B does. Each call is recorded; faults (429 with Retry-After, 503, a dropped
connection, 401) can be injected. Runs on 127.0.0.1 on a free port, in a thread.

Artifacts are served as W&B serves them to its own public API (`wandb.Api().artifact()`,
which speaks through wandb-core): the membership and artifact queries, the server's
features, the viewer, and file downloads: each file and the manifest (version 1, md5
digests) at a `directUrl`, as W&B hands out signed storage URLs.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from graphql import (
    GraphQLError,
    GraphQLResolveInfo,
    build_schema,
    execute,
    get_operation_ast,
    parse,
    validate,
)

REFERENCE = Path(__file__).with_name("reference-excerpt.graphql")
ADDITIONS = Path(__file__).with_name("schema-additions.graphql")
PART_A = "# ----------------------------- PART A"
PART_B = "# ----------------------------- PART B"


def schema_sdl() -> str:
    """PART A of W&B's reference, verbatim, plus the stubs and PART B's additions."""
    reference = REFERENCE.read_text()
    part_a = reference[reference.index(PART_A) : reference.index(PART_B)]
    return part_a + "\n" + ADDITIONS.read_text()


SCHEMA = build_schema(schema_sdl())
MODEL_REGISTRY = "model-registry"


@dataclass
class Call:
    """One request as the server saw it."""

    operation: str | None
    variables: dict[str, Any]
    document: str
    status: int
    problems: list[str] = field(default_factory=list)  # parse/validation/coercion errors
    fault: str | None = None


@dataclass
class Fault:
    kind: str  # "429" | "503" | "drop" | "401"
    operation: str | None = None
    retry_after: str | None = None


def node_id(kind: str, number: int) -> str:
    """W&B's ids are base64 of `<Type>:<n>`."""
    return base64.b64encode(f"{kind}:{number}".encode()).decode()


def now_iso() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


class WandbState:
    """W&B's launch data: queues, items, agents, entities, runs, sweeps."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.entities: dict[str, dict[str, Any]] = {}
        self.projects: set[tuple[str, str]] = set()
        self.queues: dict[str, dict[str, Any]] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self.agents: dict[str, dict[str, Any]] = {}
        self.runs: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.sweeps: dict[tuple[str, str, str], dict[str, Any]] = {}
        # Artifact versions by id; `files` maps a path in the artifact to its bytes.
        self.artifacts: dict[str, dict[str, Any]] = {}
        self.base_url = ""
        # Runs that appear in W&B only after this many RunState queries (a slow upsert).
        self.late_runs: dict[tuple[str, str, str], int] = {}

    def next_id(self, kind: str) -> str:
        return node_id(kind, next(self._ids))

    def add_entity(self, name: str, is_team: bool = False) -> None:
        self.entities[name] = {"id": self.next_id("Entity"), "name": name, "isTeam": is_team}
        self.projects.add((name, MODEL_REGISTRY))

    def add_queue(self, entity: str, name: str, project: str = MODEL_REGISTRY) -> str:
        qid = self.next_id("RunQueue")
        self.projects.add((entity, project))
        self.queues[qid] = {
            "id": qid,
            "name": name,
            "entity": entity,
            "project": project,
            "createdBy": 1,
            "access": "PROJECT",
        }
        return qid

    def find_queue(self, entity: str, project: str, name: str) -> dict[str, Any] | None:
        for queue in self.queues.values():
            if (queue["entity"], queue["project"], queue["name"]) == (entity, project, name):
                return queue
        return None

    def add_artifact(
        self,
        entity: str,
        project: str,
        name: str,
        kind: str,
        files: dict[str, bytes],
        aliases: tuple[str, ...] = ("latest",),
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Log a new version of artifact `entity/project/name` (W&B's `log_artifact`)."""
        self.projects.add((entity, project))
        versions = self.versions_of(entity, project, name)
        sequence = versions[0]["sequence"] if versions else self.next_id("ArtifactSequence")
        for older in versions:
            older["aliases"] = [a for a in older["aliases"] if a not in aliases]
        artifact_id = self.next_id("Artifact")
        entries = {
            path: {
                "digest": base64.b64encode(hashlib.md5(data).digest()).decode(),
                "size": len(data),
            }
            for path, data in files.items()
        }
        artifact = {
            "id": artifact_id,
            "sequence": sequence,
            "entity": entity,
            "project": project,
            "name": name,
            "type": kind,
            "versionIndex": len(versions),
            "aliases": list(aliases),
            "files": dict(files),
            "metadata": metadata or {},
            "manifest": {
                "version": 1,
                "storagePolicy": "wandb-storage-policy-v1",
                "storagePolicyConfig": {"storageLayout": "V2"},
                "contents": entries,
            },
            "digest": hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest(),
            "createdAt": now_iso(),
        }
        self.artifacts[artifact_id] = artifact
        return artifact

    def versions_of(self, entity: str, project: str, name: str) -> list[dict[str, Any]]:
        found = [
            a
            for a in self.artifacts.values()
            if (a["entity"], a["project"], a["name"]) == (entity, project, name)
        ]
        return sorted(found, key=lambda a: int(a["versionIndex"]))

    def find_version(
        self, entity: str, project: str, name: str, alias: str
    ) -> dict[str, Any] | None:
        for artifact in self.versions_of(entity, project, name):
            if alias in artifact["aliases"] or alias == f"v{artifact['versionIndex']}":
                return artifact
        return None

    def push(self, queue_id: str, spec: dict[str, Any], priority: int = 2) -> str:
        item_id = self.next_id("RunQueueItem")
        self.items[item_id] = {
            "id": item_id,
            "queue": queue_id,
            "runSpec": spec,
            "priority": priority,
            "state": "PENDING",
            "associatedRunId": None,
            "launchAgentId": None,
            "failure": None,
            "warnings": [],
            "createdAt": time.monotonic(),
        }
        return item_id


class Resolvers:
    """The root value: one method per Query/Mutation field, answering as W&B does."""

    def __init__(self, state: WandbState) -> None:
        self.s = state

    # -- queries --
    def project(
        self, info: GraphQLResolveInfo, entityName: str | None = None, name: str | None = None
    ) -> dict[str, Any] | None:
        if entityName is None or name is None or (entityName, name) not in self.s.projects:
            return None
        entity, project = entityName, name
        queues = [
            q for q in self.s.queues.values() if (q["entity"], q["project"]) == (entity, project)
        ]
        return {
            **self._project_info(entity, project),
            "artifactCollectionMembership": lambda info, name: self._membership(
                entity, project, name
            ),
            "artifactCollection": lambda info, name: self._collection(entity, project, name),
            "runQueues": queues,
            "runQueue": lambda info, name: self.s.find_queue(entity, project, name),
            "run": lambda info, name, desc=None: self._run(info, (entity, project, name)),
            "sweep": lambda info, sweepName: self.s.sweeps.get((entity, project, sweepName)),
        }

    def _run(self, info: GraphQLResolveInfo, key: tuple[str, str, str]) -> dict[str, Any] | None:
        if key in self.s.late_runs and info.operation.name is not None:
            if info.operation.name.value == "RunState":
                self.s.late_runs[key] -= 1
            if self.s.late_runs[key] > 0:
                return None
            del self.s.late_runs[key]
            self.s.runs.setdefault(
                key, {"id": self.s.next_id("Run"), "name": key[2], "state": "running"}
            )
        return self.s.runs.get(key)

    def entity(
        self, info: GraphQLResolveInfo, name: str | None = None, login: bool | None = None
    ) -> dict[str, Any] | None:
        return self.s.entities.get(name or "")

    def launchAgent(self, info: GraphQLResolveInfo, id: str) -> dict[str, Any] | None:
        return self.s.agents.get(id)

    def viewer(
        self, info: GraphQLResolveInfo, entityName: str | None = None
    ) -> dict[str, Any] | None:
        """The key's user: the first entity (what `wandb login` and `wandb.Api()` check)."""
        user = next(iter(self.s.entities), None)
        if user is None:
            return None
        return {
            "id": node_id("User", 1),
            "name": user,
            "entity": user,
            "username": user,
            "email": f"{user}@example.com",
            "flags": "{}",
            "teams": {"edges": []},
        }

    def serverInfo(self, info: GraphQLResolveInfo) -> dict[str, Any]:
        return {"features": []}  # no optional feature: the client asks for the basics

    def artifact(self, info: GraphQLResolveInfo, id: str) -> dict[str, Any] | None:
        found = self.s.artifacts.get(id)
        return self._artifact(found) if found is not None else None

    # -- artifacts, shaped as W&B answers them --
    def _project_info(self, entity: str, project: str) -> dict[str, Any]:
        number = len(entity) + len(project)
        return {
            "id": node_id("Project", number),
            "internalId": str(number),
            "name": project,
            "entity": self.s.entities.get(entity) or {"id": node_id("Entity", 0), "name": entity},
        }

    def _membership(self, entity: str, project: str, name: str) -> dict[str, Any] | None:
        collection, _, alias = name.partition(":")
        found = self.s.find_version(entity, project, collection, alias or "latest")
        if found is None:
            return None
        return self._membership_of(found)

    def _membership_of(self, artifact: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": node_id("ArtifactCollectionMembership", int(artifact["versionIndex"]) + 1),
            "versionIndex": artifact["versionIndex"],
            "createdAt": artifact["createdAt"],
            "aliases": self._aliases(artifact),
            "artifactCollection": self._sequence(artifact),
            "artifact": self._artifact(artifact),
            "files": lambda info, names=None, after=None, first=None: self._files(artifact, names),
        }

    def _collection(self, entity: str, project: str, name: str) -> dict[str, Any] | None:
        versions = self.s.versions_of(entity, project, name)
        if not versions:
            return None
        sequence = self._sequence(versions[0])

        def membership(info: GraphQLResolveInfo, aliasName: str) -> dict[str, Any] | None:
            found = self.s.find_version(entity, project, name, aliasName)
            return self._membership_of(found) if found is not None else None

        return {**sequence, "artifactMembership": membership}

    def _sequence(self, artifact: dict[str, Any]) -> dict[str, Any]:
        return {
            "__typename": "ArtifactSequence",
            "id": artifact["sequence"],
            "name": artifact["name"],
            "state": "READY",
            "project": self._project_info(artifact["entity"], artifact["project"]),
        }

    def _aliases(self, artifact: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "id": node_id("ArtifactAlias", i + 1),
                "alias": alias,
                "artifactCollection": self._sequence(artifact),
            }
            for i, alias in enumerate(artifact["aliases"])
        ]

    def _artifact(self, artifact: dict[str, Any]) -> dict[str, Any]:
        manifest_url = f"{self.s.base_url}/storage/{artifact['id']}/manifest"
        files = artifact["files"]
        return {
            "id": artifact["id"],
            "artifactSequence": self._sequence(artifact),
            "versionIndex": artifact["versionIndex"],
            "artifactType": {"id": node_id("ArtifactType", 1), "name": artifact["type"]},
            "description": None,
            "metadata": json.dumps(artifact["metadata"]),
            "ttlDurationSeconds": -1,
            "ttlIsInherited": True,
            "tags": [],
            "historyStep": None,
            "state": "COMMITTED",
            "size": sum(len(data) for data in files.values()),
            "digest": artifact["digest"],
            "digestAlgorithm": "MANIFEST_MD5",
            "commitHash": None,
            "fileCount": len(files),
            "createdAt": artifact["createdAt"],
            "updatedAt": artifact["createdAt"],
            "aliases": self._aliases(artifact),
            "currentManifest": {
                "id": node_id("ArtifactManifest", 1),
                "file": self._file("wandb_manifest.json", manifest_url, 0),
            },
        }

    def _files(self, artifact: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
        paths = [p for p in artifact["files"] if names is None or p in names]
        edges = [
            {
                "cursor": str(i),
                "node": self._file(
                    path,
                    f"{self.s.base_url}/storage/{artifact['id']}/files/{quote(path)}",
                    len(artifact["files"][path]),
                ),
            }
            for i, path in enumerate(paths)
        ]
        return {
            "totalCount": len(edges),
            "pageInfo": {"hasNextPage": False, "endCursor": str(len(edges) - 1)},
            "edges": edges,
        }

    def _file(self, name: str, url: str, size: int) -> dict[str, Any]:
        return {
            "id": node_id("File", size),
            "name": name,
            "displayName": name,
            "url": url,
            "directUrl": url,
            "sizeBytes": size,
            "storagePath": None,
            "mimetype": None,
            "updatedAt": now_iso(),
            "digest": None,
            "md5": None,
        }

    # -- agents --
    def createLaunchAgent(self, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
        for qid in input["runQueues"]:
            if qid not in self.s.queues:
                raise GraphQLError(f"run queue {qid} not found")
        agent_id = self.s.next_id("LaunchAgent")
        self.s.agents[agent_id] = {
            "id": agent_id,
            "name": f"agent-{len(self.s.agents) + 1}",
            "runQueues": list(input["runQueues"]),
            "hostname": input["hostname"],
            "agentStatus": "POLLING",
            "stopPolling": False,
            "heartbeatAt": now_iso(),
            "entity": input["entityName"],
            "project": input["projectName"],
            "agentConfig": json.loads(input.get("agentConfig") or "null"),
            "version": input.get("version"),
        }
        return {"launchAgentId": agent_id, "success": True}

    def updateLaunchAgent(self, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
        agent = self.s.agents.get(input["launchAgentId"])
        if agent is None:
            return {"success": False}
        if input.get("agentStatus") is not None:
            agent["agentStatus"] = input["agentStatus"]
        agent["heartbeatAt"] = now_iso()
        return {"success": True}

    # -- the queue --
    def popFromRunQueue(
        self, info: GraphQLResolveInfo, input: dict[str, Any]
    ) -> dict[str, Any] | None:
        queue = self.s.find_queue(input["entityName"], input["projectName"], input["queueName"])
        if queue is None:
            raise GraphQLError(f"run queue {input['queueName']} not found")
        agent = self.s.agents.get(input.get("launchAgentId") or "")
        if agent is not None:
            agent["heartbeatAt"] = now_iso()
        pending = [
            i
            for i in self.s.items.values()
            if i["queue"] == queue["id"] and i["state"] == "PENDING"
        ]
        if not pending:
            return None
        item = min(pending, key=lambda i: (i["priority"], i["createdAt"]))
        item["state"] = "LEASED"
        item["launchAgentId"] = input.get("launchAgentId")
        return {"runQueueItemId": item["id"], "runSpec": item["runSpec"]}

    def ackRunQueueItem(self, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
        item = self.s.items.get(input["runQueueItemId"])
        if item is None or item["state"] != "LEASED":
            return {"success": False}
        item["state"] = "CLAIMED"
        item["associatedRunId"] = input["runName"]
        return {"success": True}

    def failRunQueueItem(self, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
        item = self.s.items.get(input["runQueueItemId"])
        if item is None:
            return {"success": False}
        item["state"] = "FAILED"
        item["failure"] = {
            "message": input["message"],
            "stage": input["stage"],
            "filePaths": input.get("filePaths"),
        }
        return {"success": True}

    def updateRunQueueItemWarning(
        self, info: GraphQLResolveInfo, input: dict[str, Any]
    ) -> dict[str, Any]:
        item = self.s.items.get(input["runQueueItemId"])
        if item is None:
            return {"success": False}
        item["warnings"].append({k: input.get(k) for k in ("message", "stage", "filePaths")})
        return {"success": True}

    def pushToRunQueueByName(
        self, info: GraphQLResolveInfo, input: dict[str, Any]
    ) -> dict[str, Any] | None:
        queue = self.s.find_queue(input["entityName"], input["projectName"], input["queueName"])
        if queue is None:
            return None
        spec = json.loads(input["runSpec"])
        priority = input.get("priority")
        item_id = self.s.push(queue["id"], spec, 2 if priority is None else priority)
        return {"runQueueItemId": item_id, "runSpec": input["runSpec"]}

    # -- runs and sweeps --
    def upsertBucket(self, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
        key = (input.get("entityName") or "", input.get("project") or "", input.get("name") or "")
        self.s.projects.add(key[:2])
        inserted = key not in self.s.runs
        run = self.s.runs.setdefault(
            key, {"id": self.s.next_id("Run"), "name": key[2], "state": "running", "stopped": False}
        )
        if input.get("state"):
            run["state"] = input["state"]
        elif run["state"] == "pending":  # a sweep's run that starts: wandb.init upserts it
            run["state"] = "running"
        return {"bucket": run, "inserted": inserted}

    def upsertSweep(self, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
        for sweep in self.s.sweeps.values():
            if sweep["id"] == input.get("id"):
                if input.get("state"):
                    sweep["state"] = input["state"]
                return {"sweep": sweep, "inserted": False, "configValidationWarnings": []}
        raise GraphQLError("sweep not found")


class FakeWandb:
    """The server. `with FakeWandb(api_key=...) as w:` serves on `w.base_url`."""

    def __init__(self, api_key: str, entity: str = "acme", is_team: bool = False) -> None:
        self.api_keys = {api_key}
        self.entity = entity
        self.state = WandbState()
        self.state.add_entity(entity, is_team)
        self.downloads: list[str] = []  # paths of storage GETs, in order
        self.calls: list[Call] = []
        self.client_ports: set[int] = set()
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._resolvers = Resolvers(self.state)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeWandb:
        self.state.base_url = self.base_url
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- set-up and inspection for tests --
    def add_queue(self, name: str, entity: str | None = None) -> str:
        with self._lock:
            return self.state.add_queue(entity or self.entity, name)

    def push(self, queue: str, spec: dict[str, Any], priority: int = 2) -> str:
        with self._lock:
            found = self.state.find_queue(self.entity, MODEL_REGISTRY, queue)
            assert found is not None, f"no queue {queue}"
            return self.state.push(found["id"], spec, priority)

    def add_artifact(
        self,
        name: str,
        kind: str,
        files: dict[str, bytes],
        project: str = "demo",
        aliases: tuple[str, ...] = ("latest",),
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Log a version of `acme/<project>/<name>`; returns it (id, versionIndex...)."""
        with self._lock:
            return self.state.add_artifact(
                self.entity, project, name, kind, files, aliases, metadata
            )

    def storage(self, path: str) -> bytes | None:
        """The bytes behind a storage URL path (`/storage/<artifact id>/...`)."""
        parts = path.split("/", 4)
        if len(parts) < 4 or parts[1] != "storage":
            return None
        with self._lock:
            self.downloads.append(path)
            artifact = self.state.artifacts.get(unquote(parts[2]))
            if artifact is None:
                return None
            if parts[3] == "manifest":
                return json.dumps(artifact["manifest"]).encode()
            if parts[3] == "files" and len(parts) == 5:
                data: bytes | None = artifact["files"].get(unquote(parts[4]))
                return data
        return None

    def item(self, item_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.state.items[item_id])

    def inject(
        self,
        kind: str,
        times: int = 1,
        operation: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        with self._lock:
            self.faults.extend(Fault(kind, operation, retry_after) for _ in range(times))

    def operations(self) -> list[str | None]:
        with self._lock:
            return [c.operation for c in self.calls]

    def calls_of(self, operation: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.operation == operation and c.fault is None]

    def invalid_calls(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.problems]

    def set_agent(self, agent_id: str, **fields: Any) -> None:
        with self._lock:
            self.state.agents[agent_id].update(fields)

    # -- serving --
    def take_fault(self, operation: str | None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.operation in (None, operation):
                    self.faults.remove(fault)
                    return fault
        return None

    def answer(self, body: bytes, authorized: bool) -> tuple[int, dict[str, Any], Call]:
        """Parse, validate and execute one GraphQL request: (status, JSON answer, record)."""
        try:
            request = json.loads(body)
            document = str(request["query"])
            variables = request.get("variables") or {}
            ast = parse(document)
        except (ValueError, KeyError, TypeError, GraphQLError) as exc:
            call = Call(None, {}, body.decode(errors="replace"), 400, [f"unparseable: {exc}"])
            return 400, {"errors": [{"message": str(exc)}]}, call
        # W&B takes an empty operationName (wandb-core sends "" for unnamed queries) as none.
        operation_name = request.get("operationName") or None
        op_ast = get_operation_ast(ast, operation_name)
        name = op_ast.name.value if op_ast and op_ast.name else None
        call = Call(name, variables, document, 200)
        if not authorized:
            call.status = 401
            return 401, {"errors": [{"message": "user is not logged in"}]}, call
        problems = validate(SCHEMA, ast)
        if problems:
            call.status, call.problems = 400, [p.message for p in problems]
            return 400, {"errors": [{"message": p.message} for p in problems]}, call
        with self._lock:
            result = execute(
                SCHEMA,
                ast,
                root_value=self._resolvers,
                variable_values=variables,
                operation_name=operation_name,
            )
        errors = [{"message": e.message, "path": e.path} for e in result.errors or []]
        if result.data is None and errors:  # variables did not match their declarations
            call.problems = [e["message"] for e in errors]
        answer: dict[str, Any] = {"data": result.data}
        if errors:
            answer["errors"] = errors
        return 200, answer, call

    def record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def accept_key(self, api_key: str) -> None:
        """Another user's key (an item can carry its own, `_wandb_api_key`)."""
        with self._lock:
            self.api_keys.add(api_key)

    def authorized(self, header: str | None) -> bool:
        with self._lock:
            keys = set(self.api_keys)
        return any(header == _basic(key) for key in keys)


def _basic(api_key: str) -> str:
    return "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode()


def _handler_for(server: FakeWandb) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()  # answers go out at once, not after a delayed ACK
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            server.client_ports.add(self.client_address[1])
            if self.path.startswith("/sdk/otel/"):  # wandb-core's telemetry: accepted, unread
                self._send(200, {})
                return
            if self.path != "/graphql":
                self._send(404, {"errors": [{"message": "not found"}]})
                return
            operation = _operation_name(body)
            fault = server.take_fault(operation)
            if fault is not None:
                server.record(Call(operation, {}, "", 0, fault=fault.kind))
                self._fail(fault)
                return
            authorized = server.authorized(self.headers.get("Authorization"))
            status, answer, call = server.answer(body, authorized)
            server.record(call)
            self._send(status, answer)

        def do_GET(self) -> None:
            """Storage downloads (the signed `directUrl`s W&B hands out need no key)."""
            data = server.storage(self.path.split("?", 1)[0])
            if data is None:
                self._send(404, {"errors": [{"message": "not found"}]})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _fail(self, fault: Fault) -> None:
            if fault.kind == "drop":
                self.close_connection = True
                return
            status = int(fault.kind)
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._send(status, {"errors": [{"message": f"injected {status}"}]}, headers)

        def _send(
            self, status: int, answer: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(answer, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _operation_name(body: bytes) -> str | None:
    try:
        name = json.loads(body).get("operationName")
    except (ValueError, AttributeError):
        return None
    return str(name) if name else None
