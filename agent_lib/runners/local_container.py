"""Runs a job in a Docker container on this machine, through the engine's API (docker SDK).

Everything a job gets is in its container's config: the image, the entrypoint and args,
the environment contract (the only place secrets go), the limits allowed from
`resource_args["local-container"]`, the agent's labels (for people's filters), and a name
made from the job (`container_name`), by which a restarted agent finds the job's container
again: `run` and `find` are idempotent per job. The end of a job is the engine's wait API
answering, in a thread, never a timer. The ended container stays until `cleanup` (the item
is settled): until then it holds the job's exit code for an agent that restarts.

Command mapping: a non-empty `context.command` replaces the image's ENTRYPOINT with its
first word and CMD with the rest (W&B's `docker run --entrypoint`). A spec that gives only
`overrides.args` (no entry point, no named job) keeps the image's ENTRYPOINT and replaces
its CMD with the args. No command at all runs the image as it is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests
from docker.types import DeviceRequest, Ulimit
from docker.utils import parse_bytes

from agent_lib.config import AgentConfig
from agent_lib.errors import LaunchError, SpecError, TransientError
from agent_lib.runners.base import (
    PREEMPTING_SIGNALS,
    LaunchContext,
    Status,
    SubmittedRun,
    key_value_pairs,
    read_log_tail,
    signal_status,
)
from agent_lib.spec import LOCAL_CONTAINER
from agent_lib.states import RunState

log = logging.getLogger(__name__)
T = TypeVar("T")

LABEL_PREFIX = "launch-agent."
ITEM_LABEL = "launch-agent.item"
RUN_LABEL = "launch-agent.run"
WATCH_RETRIES = 5
REMOVED = "the container was removed by someone else"


# -- resource_args: an explicit allow-list --
@dataclass
class RunArgs:
    """`resource_args` translated: SDK keyword arguments, extra env and extra labels."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


Translator = Callable[[str, Any, RunArgs], None]

# Other spellings (docker CLI short flags, SDK names) of the keys below.
_ALIASES = {
    "cpuset-cpus": "cpuset",
    "m": "memory",
    "mem-limit": "memory",
    "memswap-limit": "memory-swap",
    "mem-reservation": "memory-reservation",
    "e": "env",
    "environment": "env",
    "w": "workdir",
    "working-dir": "workdir",
    "ulimits": "ulimit",
    "u": "user",
    "label": "labels",
    "net": "network",
    "network-mode": "network",
    "volumes": "volume",
    "v": "volume",
    "devices": "device",
    "cap_add": "cap-add",
}


def _key(raw: str) -> str:
    name = str(raw).strip().lower().replace("_", "-").lstrip("-")
    return _ALIASES.get(name, name)


def _where(key: str) -> str:
    return f'resource_args["{LOCAL_CONTAINER}"]["{key}"]'


def _bad(key: str, what: str) -> SpecError:
    return SpecError(f"{_where(key)}: {what}")


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _bad(key, f"expected a whole number, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise _bad(key, f"expected a whole number, got {value!r}") from None


def _as_bytes(key: str, value: Any) -> int:
    """Sizes as docker takes them: bytes, or a string like "512m" / "2g"."""
    try:
        size = int(parse_bytes(value)) if isinstance(value, str) else _as_int(key, value)
    except docker.errors.DockerException as exc:
        raise _bad(key, f"not a size ({exc}); use bytes or e.g. '512m', '2g'") from None
    if size <= 0:
        raise _bad(key, "must be a positive size")
    return size


def _pairs(key: str, value: Any) -> dict[str, str]:
    """A mapping, or a list of `K=V` strings (docker CLI style), as a str->str dict."""
    if value is None:
        raise _bad(key, "expected a mapping or a list of KEY=VALUE strings")
    try:
        return key_value_pairs(value)
    except ValueError as exc:
        raise _bad(key, str(exc)) from None


def _strings(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise _bad(key, "expected a string or a list of strings")


def _kwarg(name: str, convert: Callable[[str, Any], Any] | None = None) -> Translator:
    def translate(key: str, value: Any, out: RunArgs) -> None:
        out.kwargs[name] = convert(key, value) if convert else value

    return translate


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or str(value) == "":
        raise _bad(key, f"expected a non-empty string, got {value!r}")
    return str(value)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, f"expected true or false, got {value!r}")
    return value


def _cpus(key: str, value: Any, out: RunArgs) -> None:
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise _bad(key, f"expected a number of CPUs like 1.5, got {value!r}") from None
    if cpus <= 0:
        raise _bad(key, "must be more than 0")
    out.kwargs["nano_cpus"] = int(cpus * 1e9)


def _gpus(key: str, value: Any, out: RunArgs) -> None:
    """`all`, a count, `device=0,1`, or a list of device ids -> an nvidia device request."""
    caps = [["gpu"]]
    text = str(value).strip()
    if text == "all":
        request = DeviceRequest(count=-1, capabilities=caps)
    elif isinstance(value, int) or text.isdigit():
        request = DeviceRequest(count=int(text), capabilities=caps)
    elif text.startswith("device="):
        ids = [d for d in text.removeprefix("device=").split(",") if d]
        request = DeviceRequest(device_ids=ids, capabilities=caps)
    elif isinstance(value, list):
        request = DeviceRequest(device_ids=[str(v) for v in value], capabilities=caps)
    else:
        raise _bad(key, f"expected 'all', a count, 'device=0,1' or a list of ids, got {value!r}")
    out.kwargs["device_requests"] = [request]


def _env(key: str, value: Any, out: RunArgs) -> None:
    out.env.update(_pairs(key, value))


def _labels(key: str, value: Any, out: RunArgs) -> None:
    labels = _pairs(key, value)
    for name in labels:
        if name.startswith(LABEL_PREFIX):
            raise _bad(
                key, f"label {name!r}: labels starting with {LABEL_PREFIX!r} are the agent's"
            )
    out.labels.update(labels)


def _ulimits(key: str, value: Any, out: RunArgs) -> None:
    """`{"nofile": 1024}`, `{"nofile": {"soft": 1, "hard": 2}}`, or `["nofile=1024:2048"]`."""
    limits = value if isinstance(value, dict) else _pairs(key, value)
    result = []
    for name, limit in limits.items():
        if isinstance(limit, dict):
            soft, hard = limit.get("soft"), limit.get("hard", limit.get("soft"))
        else:
            soft_text, _, hard_text = str(limit).partition(":")
            soft, hard = soft_text, hard_text or soft_text
        result.append(Ulimit(name=name, soft=_as_int(key, soft), hard=_as_int(key, hard)))
    out.kwargs["ulimits"] = result


def _tmpfs(key: str, value: Any, out: RunArgs) -> None:
    if isinstance(value, dict):
        out.kwargs["tmpfs"] = {str(k): str(v) for k, v in value.items()}
        return
    mounts = {}
    for entry in _strings(key, value):
        path, _, options = entry.partition(":")
        mounts[path] = options
    out.kwargs["tmpfs"] = mounts


def _network(key: str, value: Any, out: RunArgs) -> None:
    name = _text(key, value)
    if name in ("none", "bridge", "default") or _is_host_network(name):
        out.kwargs["network_mode"] = name
    else:
        out.kwargs["network"] = name


def _is_host_network(name: str) -> bool:
    return name == "host" or name.startswith("container:")


def _volumes(key: str, value: Any, out: RunArgs) -> None:
    out.kwargs["volumes"] = value if isinstance(value, dict) else _strings(key, value)


def _size(name: str) -> Translator:
    return _kwarg(name, _as_bytes)


SAFE_ARGS: dict[str, Translator] = {
    "cpus": _cpus,
    "cpuset": _kwarg("cpuset_cpus", _text),
    "cpu-shares": _kwarg("cpu_shares", _as_int),
    "memory": _size("mem_limit"),
    "memory-swap": _kwarg("memswap_limit", lambda k, v: -1 if v == -1 else _as_bytes(k, v)),
    "memory-reservation": _size("mem_reservation"),
    "shm-size": _size("shm_size"),
    "gpus": _gpus,
    "env": _env,
    "workdir": _kwarg("working_dir", _text),
    "ulimit": _ulimits,
    "pids-limit": _kwarg("pids_limit", _as_int),
    "name": _kwarg("name", _text),
    "user": _kwarg("user", _text),
    "labels": _labels,
    "hostname": _kwarg("hostname", _text),
    "init": _kwarg("init", _flag),
    "read-only": _kwarg("read_only", _flag),
    "tmpfs": _tmpfs,
    "stop-signal": _kwarg("stop_signal", _text),
    "network": _network,
}

# Keys that reach past the container onto the host: refused unless `container_allow`
# names them. The text says why, in the refusal.
GUARDED_ARGS: dict[str, tuple[Translator, str]] = {
    "privileged": (_kwarg("privileged", _flag), "it gives the job root on the host"),
    "volume": (_volumes, "it mounts host paths into the job"),
    "device": (_kwarg("devices", _strings), "it gives the job host devices"),
    "cap-add": (_kwarg("cap_add", _strings), "it adds kernel capabilities"),
    "security-opt": (_kwarg("security_opt", _strings), "it changes the security profile"),
    "pid": (_kwarg("pid_mode", _text), "it shares the host's (or another) PID namespace"),
    "ipc": (_kwarg("ipc_mode", _text), "it shares the host's (or another) IPC namespace"),
    "uts": (_kwarg("uts_mode", _text), "it shares the host's UTS namespace"),
    "userns": (_kwarg("userns_mode", _text), "it changes the user namespace"),
}


def container_run_args(resource_args: dict[str, Any], allow: Iterable[str] = ()) -> RunArgs:
    """Translate `resource_args["local-container"]`; refuse what the allow-list does not name.

    Raises SpecError naming the key, before anything is created.
    """
    allowed = {_key(a) for a in allow}
    out = RunArgs()
    for raw_key, value in resource_args.items():
        key = _key(raw_key)
        if key == "network" and _is_host_network(str(value)) and "network" not in allowed:
            raise _refusal(raw_key, f"network {value!r} shares the host's network", "network")
        if key in SAFE_ARGS:
            SAFE_ARGS[key](raw_key, value, out)
        elif key in GUARDED_ARGS:
            translate, why = GUARDED_ARGS[key]
            if key not in allowed:
                raise _refusal(raw_key, why, key)
            translate(raw_key, value, out)
        else:
            known = ", ".join(sorted([*SAFE_ARGS, *GUARDED_ARGS]))
            raise _bad(raw_key, f"unknown key for a local container (known keys: {known})")
    return out


def _refusal(raw_key: str, why: str, allow_name: str) -> SpecError:
    return SpecError(
        f"{_where(raw_key)} is not allowed by this agent: {why}. Remove it from the launch "
        f"spec, or add {allow_name!r} to the agent's container_allow config to permit it."
    )


# -- the engine --
@functools.cache
def shared_client() -> Any:
    """One client per process for short calls; long waits and log streams get their own."""
    try:
        client = docker.from_env(max_pool_size=32)
        client.ping()
    except docker.errors.DockerException as exc:
        shared_client.cache_clear()
        raise TransientError(
            f"cannot reach the Docker engine ({exc}); is dockerd running?"
        ) from exc
    return client


def stream_client() -> Any:
    """A client of its own for a blocking call (wait, log stream), same API version."""
    return docker.from_env(version=shared_client().api.api_version, timeout=60)


def engine_error(what: str, exc: Exception) -> Exception:
    """Turn an SDK error into ours: engine trouble is transient, a bad request is not."""
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return TransientError(f"{what}: the Docker engine did not answer ({exc})")
    if isinstance(exc, docker.errors.APIError):
        detail = exc.explanation or str(exc)
        if exc.status_code == 409:
            return LaunchError(f"{what}: {detail} (choose another name, or remove the container)")
        if exc.is_server_error() and "OCI runtime" not in str(detail):
            return TransientError(f"{what}: the Docker engine failed ({detail})")
        return LaunchError(f"{what}: {detail}")
    return LaunchError(f"{what}: {exc}")


NAME_PREFIX = "la-"
MAX_NAME = 200
NAME_SETTLE = 5.0  # seconds a racing create may take to show its container
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_RUN_UNSAFE = re.compile(r"[^a-zA-Z0-9_.]")  # no '-' in the last part: it splits item and run


def container_name(jobs_dir: Path, item_id: str, run_id: str) -> str:
    """The job's container name, `la-<data dir hash>-<item>-<run>`.

    The engine refuses a second container by one name, which is what makes `run` idempotent
    even when two callers race. The hash of the jobs folder keeps agents with different data
    dirs apart on one engine. Ids that Docker's name rule (or the item/run split) made us
    change, and over-long names, get a hash of the real ids, so two jobs never share a name.
    """
    home = hashlib.sha256(str(jobs_dir).encode()).hexdigest()[:8]
    item, run = _NAME_UNSAFE.sub("_", item_id), _RUN_UNSAFE.sub("_", run_id)
    name = f"{NAME_PREFIX}{home}-{item}-{run}"
    if (item, run) != (item_id, run_id) or len(name) > MAX_NAME:
        ids = hashlib.sha256(f"{item_id}\0{run_id}".encode()).hexdigest()[:12]
        name = f"{name[: MAX_NAME - len(ids) - 1]}-{ids}"
    return name


@dataclass(frozen=True)
class _Found:
    """A job's existing container: its id and engine state (`created`, `running`...)."""

    container_id: str
    state: str


class _NameTaken(Exception):
    """Create answered 409: a container by the job's name appeared in between."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class LocalContainerRunner:
    """Starts a job's container, or finds the one started for it before (by its name).

    `run` and `find` are idempotent per job (item + run id): a restarted agent gets the
    container that is still going, or that ended while no agent watched, with its exit code.
    """

    resource = LOCAL_CONTAINER

    def __init__(self, config: AgentConfig) -> None:
        self._config = config

    def name_for(self, context: LaunchContext) -> str:
        """The container name of this job: `resource_args` `name` if given, else ours."""
        for key, value in context.resource_args.items():
            if _key(key) == "name" and isinstance(value, str | int) and str(value):
                return str(value)
        return container_name(self._config.jobs_dir, context.item_id, context.run_id)

    async def find(self, context: LaunchContext) -> ContainerRun | None:
        """The container started earlier for this job (running or ended), or None.

        Starts nothing. A container only `created` (its agent died between create and
        start) counts as not started: None, so the caller launches, and `run` starts that
        container instead of making another. A handle on it would only report a failure.
        """
        found = await asyncio.to_thread(lambda: self._inspect(shared_client(), context))
        if found is None or found.state == "created":
            return None
        return self._handle(context, found.container_id, True)

    async def run(self, context: LaunchContext) -> ContainerRun:
        """Start the job's container, or return the one already there (starting it if it
        was only created). Two calls for one job never make two containers."""
        args = container_run_args(context.resource_args, self._config.container_allow)
        if not context.image:
            raise SpecError(
                "a local-container job needs an image: set docker.docker_image (or image_uri), "
                "or give a source (uri / git.url) with builder type 'docker'"
            )
        create = self._create_kwargs(context, args)
        container_id, adopted = await asyncio.to_thread(
            self._find_or_start, context, context.image, create
        )
        if adopted:
            log.info(
                "item %s: container %s already exists; following it",
                context.item_id,
                container_id[:12],
            )
        run = self._handle(context, container_id, adopted)
        run.watch()
        return run

    def _handle(self, context: LaunchContext, container_id: str, adopted: bool) -> ContainerRun:
        context.log_path.parent.mkdir(parents=True, exist_ok=True)
        return ContainerRun(
            container_id, context.log_path, self._config.remove_containers, rewrite_log=adopted
        )

    def _create_kwargs(self, context: LaunchContext, args: RunArgs) -> dict[str, Any]:
        entrypoint, command = container_command(context)
        kwargs: dict[str, Any] = {
            **args.kwargs,
            "name": self.name_for(context),
            "environment": {**args.env, **context.env},  # the contract wins
            "labels": {**args.labels, **context.labels},
            "detach": True,
        }
        if entrypoint is not None:
            kwargs["entrypoint"] = entrypoint
        if command is not None:
            kwargs["command"] = command
        return kwargs

    def _find_or_start(
        self, context: LaunchContext, image: str, kwargs: dict[str, Any]
    ) -> tuple[str, bool]:
        """(container id, whether it existed before this call)."""
        client = shared_client()
        found = self._inspect(client, context)
        if found is None:
            try:
                container_id = self._create(client, image, kwargs)
            except _NameTaken as taken:
                found = self._inspect_taken(client, context)
                if found is None:  # not this job's container: the name belongs to another
                    raise taken.error from None
            else:
                self._start(client, container_id, image, created_here=True)
                return container_id, False
        if found.state == "created":
            log.info(
                "container %s was created but never started; starting it", found.container_id[:12]
            )
            self._start(client, found.container_id, image, created_here=False)
        return found.container_id, True

    def _inspect(self, client: Any, context: LaunchContext) -> _Found | None:
        """The container by the job's name if it is this job's (its item and run labels)."""
        name = self.name_for(context)
        try:
            info = client.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        except Exception as exc:
            raise engine_error(f"cannot look up container {name!r}", exc) from exc
        labels = (info.get("Config") or {}).get("Labels") or {}
        for label, value in ((ITEM_LABEL, context.item_id), (RUN_LABEL, context.run_id)):
            if labels.get(label) != value:
                return None
        return _Found(str(info["Id"]), str((info.get("State") or {}).get("Status", "")))

    def _inspect_taken(self, client: Any, context: LaunchContext) -> _Found | None:
        """After a 409: the engine reserves a name before the container can be inspected
        by it, so a racing create's container may take a moment to appear."""
        deadline = time.monotonic() + NAME_SETTLE
        while True:
            found = self._inspect(client, context)
            if found is not None or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    @staticmethod
    def _start(client: Any, container_id: str, image: str, created_here: bool) -> None:
        """Start it (a no-op if it already runs). One we just created that cannot start is
        removed, so that a retry creates it anew instead of finding a dud; one found is
        left alone (a racing caller may be starting it)."""
        try:
            client.api.start(container_id)
        except Exception as exc:
            if created_here:
                with contextlib.suppress(Exception):
                    client.api.remove_container(container_id, force=True)
            raise engine_error(f"cannot start the container of image {image!r}", exc) from exc

    def _create(self, client: Any, image: str, kwargs: dict[str, Any]) -> str:
        try:
            return self._create_once(client, image, kwargs)
        except docker.errors.ImageNotFound:
            self._pull(client, image)
        try:
            return self._create_once(client, image, kwargs)
        except docker.errors.ImageNotFound as exc:
            raise engine_error("cannot create the container", exc) from exc

    @staticmethod
    def _create_once(client: Any, image: str, kwargs: dict[str, Any]) -> str:
        try:
            return str(client.containers.create(image, **kwargs).id)
        except docker.errors.ImageNotFound:
            raise
        except Exception as exc:
            error = engine_error("cannot create the container", exc)
            if isinstance(exc, docker.errors.APIError) and exc.status_code == 409:
                raise _NameTaken(error) from exc
            raise error from exc

    @staticmethod
    def _pull(client: Any, image: str) -> None:
        log.info("image %s is not on this machine; pulling it", image)
        try:
            client.images.pull(image)
        except docker.errors.DockerException as exc:
            raise LaunchError(
                f"image {image!r} is not on this machine's Docker engine and could not be "
                f"pulled ({exc}). Build or load it first, or let the docker builder build it."
            ) from exc


def container_command(context: LaunchContext) -> tuple[list[str] | None, list[str] | None]:
    """(entrypoint, command) for the engine; None keeps the image's own."""
    if not context.command:
        return None, None
    spec = context.spec
    args_only = not spec.overrides.entry_point and not spec.job
    if args_only and context.command == list(spec.overrides.args):
        return None, list(context.command)
    return [context.command[0]], list(context.command[1:])


# -- one container --
class _Watch:
    """Follows one container to its end in a thread: the engine's wait API for its exit,
    its log stream into the job folder. One per container in a process, shared by every
    handle on it, so two handles never write one log file at once."""

    def __init__(self, container_id: str, log_path: Path, rewrite_log: bool) -> None:
        self.container_id = container_id
        self.log_path = log_path
        self.rewrite_log = rewrite_log
        self.cancelled = False
        self.done: concurrent.futures.Future[Status] = concurrent.futures.Future()

    @property
    def short_id(self) -> str:
        return self.container_id[:12]

    def start(self) -> None:
        threading.Thread(
            target=self._follow, name=f"container-{self.short_id}", daemon=True
        ).start()

    def _follow(self) -> None:
        try:
            client = stream_client()
            logs = threading.Thread(target=self._copy_logs, args=(client,), daemon=True)
            logs.start()
            status = self._wait_for_exit(client)
            logs.join(timeout=30)
        except Exception as exc:  # never leave a waiter hanging
            log.exception("container %s: lost track of it", self.short_id)
            status = Status(RunState.FAILED, None, f"lost track of the container: {exc}")
        self.done.set_result(status)
        _forget_watch(self)

    def _copy_logs(self, client: Any) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.log_path.open("wb" if self.rewrite_log else "ab") as out:
                stream = client.api.logs(self.container_id, stream=True, follow=True)
                for chunk in stream:
                    out.write(chunk)
                    out.flush()
        except Exception as exc:
            log.warning("container %s: log stream ended early: %s", self.short_id, exc)

    def _wait_for_exit(self, client: Any) -> Status:
        """The engine's wait API, retried a few times if the engine is briefly away."""
        for attempt in range(1, WATCH_RETRIES + 1):
            try:
                state = client.api.inspect_container(self.container_id)["State"]
                if state.get("Status") == "created":
                    return Status(
                        RunState.FAILED,
                        None,
                        "the container was created but never started (the runner's run starts it)",
                    )
                result = client.api.wait(self.container_id)
                info = client.api.inspect_container(self.container_id)
                if (info.get("State") or {}).get("Status") == "removing" and not self.cancelled:
                    code = result.get("StatusCode")
                    return Status(RunState.FAILED, code, REMOVED)
                return final_status(result, info, self.cancelled)
            except docker.errors.NotFound:
                return Status(RunState.FAILED, None, REMOVED)
            except (requests.exceptions.ConnectionError, docker.errors.APIError) as exc:
                if attempt == WATCH_RETRIES:
                    raise
                log.warning("container %s: engine unavailable (%s); retrying", self.short_id, exc)
                time.sleep(min(10.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")


_WATCHES: dict[str, _Watch] = {}
_WATCHES_LOCK = threading.Lock()


def _watch_for(container_id: str, log_path: Path, rewrite_log: bool) -> _Watch:
    """The container's running watcher, or a new one started now."""
    with _WATCHES_LOCK:
        watch = _WATCHES.get(container_id)
        if watch is None:
            watch = _WATCHES[container_id] = _Watch(container_id, log_path, rewrite_log)
            watch.start()
        return watch


def _forget_watch(watch: _Watch) -> None:
    """Drop an ended watcher: a later handle re-reads the container (still there until
    cleanup) and rewrites the whole log, which costs little and leaks nothing."""
    with _WATCHES_LOCK:
        if _WATCHES.get(watch.container_id) is watch:
            del _WATCHES[watch.container_id]


class ContainerRun(SubmittedRun):
    """A handle on one container. Its end comes from a watcher thread (which also copies
    the logs to the job folder); the container itself stays until `cleanup`, because until
    the item is settled it is how a restarted agent learns the job's exit code."""

    def __init__(
        self, container_id: str, log_path: Path, remove: bool, rewrite_log: bool = True
    ) -> None:
        self._id = container_id
        self._log_path = log_path
        self._remove = remove
        self._rewrite_log = rewrite_log
        self._watch: _Watch | None = None
        self._cleaned = False

    @property
    def id(self) -> str:
        return self._id[:12]

    @property
    def container_id(self) -> str:
        return self._id

    def watch(self) -> _Watch:
        """Start following the container (once per container in this process).

        The log is written anew when the run was found rather than started here (its
        earlier agent died mid-stream), appended to otherwise.
        """
        if self._watch is None:
            self._watch = _watch_for(self._id, self._log_path, self._rewrite_log)
        return self._watch

    async def get_status(self) -> Status:
        watch = self.watch()
        if watch.done.done():
            return watch.done.result()
        return Status(RunState.STOPPING if watch.cancelled else RunState.RUNNING)

    async def wait(self) -> Status:
        return await asyncio.shield(asyncio.wrap_future(self.watch().done))

    async def cancel(self, grace: float = 10.0) -> None:
        """Stop: the image's stop signal (SIGTERM), then SIGKILL after `grace` seconds."""
        watch = self.watch()
        if watch.done.done():
            return
        watch.cancelled = True
        with contextlib.suppress(docker.errors.NotFound):
            await asyncio.to_thread(self._stop, grace)
        await self.wait()

    def _stop(self, grace: float) -> None:
        client = shared_client()
        try:
            client.api.stop(self._id, timeout=max(0, round(grace)))
        except docker.errors.NotFound:
            raise
        except Exception as exc:
            log.warning("container %s: stop failed (%s); killing it", self.id, exc)
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.kill(self._id)

    async def get_logs(self, tail: int | None = None) -> str:
        return read_log_tail(self._log_path, tail)

    async def cleanup(self) -> None:
        """Remove the ended container (unless `remove_containers: false`) once its item is
        settled. One that still runs is left alone with a warning: cleanup never kills a
        job (cancel does)."""
        if self._cleaned or not self._remove:
            return
        if await asyncio.to_thread(self._still_running):
            log.warning("container %s: still running at cleanup; left alone", self.id)
            return
        watch = self._watch or _WATCHES.get(self._id)  # another handle's, maybe
        if watch is not None and not watch.done.done():
            # It has just ended: let the watcher finish copying its logs first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(watch.done)), 35)
        self._cleaned = await asyncio.to_thread(self._remove_container)

    def _still_running(self) -> bool:
        try:
            state = shared_client().api.inspect_container(self._id).get("State") or {}
        except docker.errors.NotFound:
            return False
        except Exception as exc:
            raise engine_error(f"cannot inspect container {self.id}", exc) from exc
        return bool(state.get("Running") or state.get("Restarting"))

    def _remove_container(self) -> bool:
        try:
            shared_client().api.remove_container(self._id)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            log.warning("container %s: could not remove it: %s", self.id, exc)
            return False
        return True


def final_status(result: dict[str, Any], info: dict[str, Any], cancelled: bool) -> Status:
    """The engine's wait answer and inspect record as a Status with a readable reason."""
    code = int(result.get("StatusCode", -1))
    state = info.get("State") or {}
    if cancelled:
        return Status(RunState.STOPPED, exit_code=code, reason="cancelled")
    if code == 0:
        return Status(RunState.FINISHED, exit_code=0)
    if state.get("OOMKilled"):
        limit = (info.get("HostConfig") or {}).get("Memory") or 0
        where = f" (limit {human_size(limit)})" if limit else ""
        return Status(RunState.FAILED, exit_code=code, reason=f"out of memory{where}")
    error = (result.get("Error") or {}).get("Message") or state.get("Error")
    if error:
        return Status(RunState.FAILED, exit_code=code, reason=str(error))
    if code > 128 and (code - 128) in signal.Signals._value2member_map_:
        # `docker stop` or a kill by someone else; an OOM kill was caught above.
        return signal_status(code - 128, code, PREEMPTING_SIGNALS | {signal.SIGKILL})
    return Status(RunState.FAILED, exit_code=code)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
