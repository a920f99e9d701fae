"""Runs a job in a Docker container on this machine, through the engine's API (docker SDK).

Everything a job gets is in its container's config: the image, the entrypoint and args,
the environment contract (the only place secrets go), the limits allowed from
`resource_args["local-container"]`, and the agent's labels, by which a restarted agent
finds its containers again (`list_runs`). The end of a job is the engine's wait API
answering, in a thread, never a timer.

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
import logging
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
from agent_lib.files import job_dir_for
from agent_lib.runners.base import LaunchContext, Status, SubmittedRun, read_log_tail
from agent_lib.spec import LOCAL_CONTAINER
from agent_lib.states import RunState

log = logging.getLogger(__name__)
T = TypeVar("T")

LABEL_PREFIX = "launch-agent."
ITEM_LABEL = "launch-agent.item"
RUN_LABEL = "launch-agent.run"
WATCH_RETRIES = 5


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
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, str] = {}
        for entry in value:
            name, sep, val = str(entry).partition("=")
            if not sep or not name:
                raise _bad(key, f"entry {entry!r} must be KEY=VALUE")
            out[name] = val
        return out
    raise _bad(key, "expected a mapping or a list of KEY=VALUE strings")


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


class LocalContainerRunner:
    """Starts a job's container; finds the containers of earlier agents (`list_runs`)."""

    resource = LOCAL_CONTAINER

    def __init__(self, config: AgentConfig) -> None:
        self._config = config

    async def run(self, context: LaunchContext) -> ContainerRun:
        args = container_run_args(context.resource_args, self._config.container_allow)
        if not context.image:
            raise SpecError(
                "a local-container job needs an image: set docker.docker_image (or image_uri), "
                "or give a source (uri / git.url) with builder type 'docker'"
            )
        create = self._create_kwargs(context, args)
        container_id = await asyncio.to_thread(self._create_and_start, context.image, create)
        context.log_path.parent.mkdir(parents=True, exist_ok=True)
        run = ContainerRun(container_id, context.log_path, self._config.remove_containers)
        run.watch(rewrite_log=False)
        return run

    def _create_kwargs(self, context: LaunchContext, args: RunArgs) -> dict[str, Any]:
        entrypoint, command = container_command(context)
        kwargs: dict[str, Any] = {
            **args.kwargs,
            "environment": {**args.env, **context.env},  # the contract wins
            "labels": {**args.labels, **context.labels},
            "detach": True,
        }
        if entrypoint is not None:
            kwargs["entrypoint"] = entrypoint
        if command is not None:
            kwargs["command"] = command
        return kwargs

    def _create_and_start(self, image: str, kwargs: dict[str, Any]) -> str:
        client = shared_client()
        container = self._create(client, image, kwargs)
        try:
            container.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                container.remove(force=True)
            raise engine_error(f"cannot start the container of image {image!r}", exc) from exc
        return str(container.id)

    def _create(self, client: Any, image: str, kwargs: dict[str, Any]) -> Any:
        try:
            return client.containers.create(image, **kwargs)
        except docker.errors.ImageNotFound:
            self._pull(client, image)
        except Exception as exc:
            raise engine_error("cannot create the container", exc) from exc
        try:
            return client.containers.create(image, **kwargs)
        except Exception as exc:
            raise engine_error("cannot create the container", exc) from exc

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

    async def list_runs(self) -> list[tuple[dict[str, str], SubmittedRun]]:
        """The containers this or an earlier agent started that are still there.

        Nothing is done to them here: a run starts watching (logs, removal) only when the
        agent adopts it and waits on it, so a container the agent may not adopt is left
        alone.
        """
        containers = await asyncio.to_thread(self._find_containers)
        found: list[tuple[dict[str, str], SubmittedRun]] = []
        for container_id, labels in containers:
            log_path = job_dir_for(self._config.jobs_dir, labels[ITEM_LABEL], labels[RUN_LABEL])
            run = ContainerRun(
                container_id, log_path / "output.log", self._config.remove_containers
            )
            found.append((labels, run))
        return found

    def _find_containers(self) -> list[tuple[str, dict[str, str]]]:
        client = shared_client()
        try:
            listed = client.api.containers(all=True, filters={"label": [ITEM_LABEL, RUN_LABEL]})
        except Exception as exc:
            raise engine_error("cannot list containers", exc) from exc
        return [(str(c["Id"]), dict(c.get("Labels") or {})) for c in listed]


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
class ContainerRun(SubmittedRun):
    """A handle on one container. A watcher thread waits for its end (the engine's wait
    API), keeps its logs in the job folder, then removes it (if configured)."""

    def __init__(self, container_id: str, log_path: Path, remove: bool) -> None:
        self._id = container_id
        self._log_path = log_path
        self._remove = remove
        self._cancelled = False
        self._done: concurrent.futures.Future[Status] = concurrent.futures.Future()
        self._watch_lock = threading.Lock()
        self._watching = False

    @property
    def id(self) -> str:
        return self._id[:12]

    @property
    def container_id(self) -> str:
        return self._id

    def watch(self, rewrite_log: bool = True) -> None:
        """Start following the container (once). `rewrite_log`: write its whole log anew
        (a re-attached run, whose earlier agent died mid-stream)."""
        with self._watch_lock:
            if self._watching:
                return
            self._watching = True
        threading.Thread(
            target=self._follow, args=(rewrite_log,), name=f"container-{self.id}", daemon=True
        ).start()

    async def get_status(self) -> Status:
        self.watch()
        if self._done.done():
            return self._done.result()
        return Status(RunState.STOPPING if self._cancelled else RunState.RUNNING)

    async def wait(self) -> Status:
        self.watch()
        return await asyncio.shield(asyncio.wrap_future(self._done))

    async def cancel(self, grace: float = 10.0) -> None:
        """Stop: the image's stop signal (SIGTERM), then SIGKILL after `grace` seconds."""
        self.watch()
        if self._done.done():
            return
        self._cancelled = True
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

    # -- the watcher thread --
    def _follow(self, rewrite_log: bool) -> None:
        try:
            client = stream_client()
            logs = threading.Thread(target=self._copy_logs, args=(client, rewrite_log), daemon=True)
            logs.start()
            status = self._wait_for_exit(client)
            logs.join(timeout=30)
            if self._remove:
                self._remove_container(client)
        except Exception as exc:  # never leave a waiter hanging
            log.exception("container %s: lost track of it", self.id)
            status = Status(RunState.FAILED, None, f"lost track of the container: {exc}")
        self._done.set_result(status)

    def _copy_logs(self, client: Any, rewrite: bool) -> None:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._log_path.open("wb" if rewrite else "ab") as out:
                stream = client.api.logs(self._id, stream=True, follow=True)
                for chunk in stream:
                    out.write(chunk)
                    out.flush()
        except Exception as exc:
            log.warning("container %s: log stream ended early: %s", self.id, exc)

    def _wait_for_exit(self, client: Any) -> Status:
        """The engine's wait API, retried a few times if the engine is briefly away."""
        for attempt in range(1, WATCH_RETRIES + 1):
            try:
                state = client.api.inspect_container(self._id)["State"]
                if state.get("Status") == "created":
                    return Status(
                        RunState.FAILED, None, "the container was created but never started"
                    )
                result = client.api.wait(self._id)
                info = client.api.inspect_container(self._id)
                return final_status(result, info, self._cancelled)
            except docker.errors.NotFound:
                return Status(RunState.FAILED, None, "the container was removed by someone else")
            except (requests.exceptions.ConnectionError, docker.errors.APIError) as exc:
                if attempt == WATCH_RETRIES:
                    raise
                log.warning("container %s: engine unavailable (%s); retrying", self.id, exc)
                time.sleep(min(10.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    def _remove_container(self, client: Any) -> None:
        try:
            client.api.remove_container(self._id)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            log.warning("container %s: could not remove it: %s", self.id, exc)


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
        name = signal.Signals(code - 128).name
        return Status(RunState.FAILED, exit_code=code, reason=f"killed by signal {name}")
    return Status(RunState.FAILED, exit_code=code)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
