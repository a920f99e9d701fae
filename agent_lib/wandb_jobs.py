"""W&B job artifacts: items that say `job: entity/project/name:alias`, run as W&B's agent runs them.

A W&B job is an artifact of type `job` whose `wandb-job.json` says where the code is
(`source_type`): `repo` (a git remote and commit), `artifact` (a `code` artifact) or
`image` (a container image), plus the entry point and, in `requirements.frozen.txt`, the
Python packages it needs. Resolving one here:

- **Fetch**: W&B's own client does the W&B part (`wandb.Api().artifact(name, type="job")`
  and `.download()`, and the same for a `code` artifact), so names, aliases, registry
  paths, signed URLs and the local artifact cache behave exactly as under W&B's agent. It
  runs in a short-lived child process (`python -m agent_lib.wandb_jobs fetch ...`): the
  `wandb` package stays an optional extra, its wandb-core service and global settings never
  live in the agent's process, and the API key reaches it by environment only.
- **Code**: a repo job is cloned and checked out at its commit (its `diff.patch` applied,
  as W&B does); an artifact job's code artifact is downloaded. Either way into the job's
  working directory (`jobs/<item>-<run>/work`), with `requirements.frozen.txt` beside it.
- **Run**: on `local-process` in a virtual environment made for the job's requirements and
  kept in `<data_dir>/venvs/<hash>` (the hash of the Python version, the requirements and the
  pip arguments), so jobs with the same requirements share it; on `local-container` the
  code is built by the agent's builder (`builder.type: docker`), or an image job's image is
  run. The item's `overrides.entry_point` and `overrides.args` apply as under W&B.

What is not supported fails the item in phase `agent`, saying so: notebook jobs, jobs that
run in a `base_image` with their code mounted, image jobs on local-process (as in W&B),
resources other than local-process and local-container. The job's `input_types` are not
checked (W&B checks them when the item is queued, not in the agent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_lib.errors import BuildError, LaunchError
from agent_lib.runners.base import read_log_tail
from agent_lib.spec import LOCAL_CONTAINER, LOCAL_PROCESS, SCHEDULER_PLACEHOLDER_URI, LaunchSpec

log = logging.getLogger(__name__)

JOB_FILE = "wandb-job.json"
REQUIREMENTS_FILE = "requirements.frozen.txt"
DIFF_FILE = "diff.patch"
SOURCE_TYPES = ("repo", "artifact", "image")
VENV_READY = ".launch-agent-ready"
FETCH_TIMEOUT = 600.0
GIT_TIMEOUT = 600.0
PIP_TIMEOUT = 1800.0
TAIL_LINES = 20
_PYTHON = re.compile(r"python(\d+(\.\d+)?)?")
_COMMIT = re.compile(r"[0-9a-fA-F]{4,64}")
_UNSUPPORTED = "W&B job {name}: {what} is not supported by this agent"


def is_wandb_job(spec: LaunchSpec, named_jobs: Mapping[str, Any]) -> bool:
    """Whether the item runs a W&B job artifact: a `job` that is not one of the agent's own
    named jobs. A sweep scheduler that brings its own command (`uri:
    placeholder-uri-scheduler` with `overrides.entry_point`) runs that command; its `job`
    names the sweep's job, for the scheduler to use."""
    if not spec.job or spec.job in named_jobs:
        return False
    return not (spec.uri == SCHEDULER_PLACEHOLDER_URI and spec.overrides.entry_point)


@dataclass(frozen=True)
class JobInfo:
    """What `wandb-job.json` says, checked."""

    name: str
    source_type: str
    entry_point: list[str]
    args: list[str]
    image: str | None = None
    git_remote: str | None = None
    git_commit: str | None = None
    code_artifact: str | None = None
    dockerfile: str | None = None
    build_context: str | None = None
    runtime: str | None = None

    @classmethod
    def read(cls, name: str, job_dir: Path) -> JobInfo:
        try:
            data = json.loads((job_dir / JOB_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise LaunchError(f"W&B job {name}: could not read its {JOB_FILE}: {exc}") from None
        if not isinstance(data, dict):
            raise LaunchError(f"W&B job {name}: {JOB_FILE} is not a JSON object")
        source_type = data.get("source_type")
        raw_source = data.get("source")
        source: dict[str, Any] = raw_source if isinstance(raw_source, dict) else {}
        if source_type not in SOURCE_TYPES:
            raise LaunchError(
                _UNSUPPORTED.format(name=name, what=f"source type {source_type!r}")
                + f" (supported: {', '.join(SOURCE_TYPES)})"
            )
        if source.get("notebook"):
            raise LaunchError(_UNSUPPORTED.format(name=name, what="a notebook job"))
        if source.get("base_image"):
            raise LaunchError(
                _UNSUPPORTED.format(
                    name=name, what="a job that runs in a base_image with its code mounted"
                )
            )
        raw_git = source.get("git")
        git: dict[str, Any] = raw_git if isinstance(raw_git, dict) else {}
        info = cls(
            name=name,
            source_type=str(source_type),
            entry_point=_strings(source.get("entrypoint")),
            args=_strings(source.get("args")),
            image=_str(source.get("image")),
            git_remote=_str(git.get("remote")),
            git_commit=_str(git.get("commit")),
            code_artifact=_str(source.get("artifact")),
            dockerfile=_str(source.get("dockerfile")),
            build_context=_str(source.get("build_context")),
            runtime=_str(data.get("runtime")),
        )
        missing = {
            "repo": [k for k in ("git_remote", "git_commit") if not getattr(info, k)],
            "artifact": [] if info.code_artifact else ["artifact"],
            "image": [] if info.image else ["image"],
        }[info.source_type]
        if info.git_commit and not _COMMIT.fullmatch(info.git_commit):
            raise LaunchError(
                f"W&B job {name}: its {JOB_FILE} has a malformed source: git.commit is not a "
                "commit hash"
            )
        if missing:
            raise LaunchError(
                f"W&B job {name}: its {JOB_FILE} has a malformed source: "
                f"{', '.join(m.replace('git_', 'git.') for m in missing)} missing"
            )
        return info


@dataclass(frozen=True)
class ResolvedJob:
    """A W&B job made ready to run: its code in the work directory, its environment made."""

    info: JobInfo
    code_dir: Path | None = None
    venv: Path | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def image(self) -> str | None:
        return self.info.image

    def command(self, spec: LaunchSpec) -> list[str]:
        """The entry point (the item's override, else the job's) and the item's args. As
        in W&B's agent, the job's own recorded `args` are not added: the item says them."""
        entry = list(spec.overrides.entry_point or self.info.entry_point)
        args = list(spec.overrides.args)
        if entry and self.venv is not None and _PYTHON.fullmatch(entry[0]):
            entry[0] = str(self.venv / "bin" / "python")
        return [*entry, *args]

    def environment(self, host_path: str | None) -> dict[str, str]:
        """VIRTUAL_ENV and PATH for a job that runs in its virtual environment."""
        if self.venv is None:
            return {}
        path = str(self.venv / "bin")
        return {"VIRTUAL_ENV": str(self.venv), "PATH": f"{path}:{host_path}" if host_path else path}

    def build_spec(self, spec: LaunchSpec) -> LaunchSpec:
        """The spec the builder sees: the job's code as its source (`uri`), or its image."""
        wire = spec.to_wire()
        wire.pop("job", None)
        if self.info.source_type == "image":
            wire["docker"] = {**wire.get("docker", {}), "docker_image": self.info.image}
            return LaunchSpec.model_validate(wire)
        assert self.code_dir is not None
        wire["uri"] = str(self.code_dir)
        wire.pop("git", None)
        builder = dict(wire.get("builder") or {})
        if self.info.dockerfile:
            builder.setdefault("dockerfile", self.info.dockerfile)
        if self.info.build_context:
            builder.setdefault("context", self.info.build_context)
        if builder:
            wire["builder"] = builder
        return LaunchSpec.model_validate(wire)


@dataclass(frozen=True)
class ResolveSettings:
    """Where things go and what the fetch may use."""

    job_dir: Path  # the item's job folder; code goes to job_dir/work
    cache_dir: Path  # <data_dir>: venvs/ and wandb/ (W&B's artifact cache) live here
    credentials: Mapping[str, str]  # WANDB_BASE_URL, WANDB_API_KEY
    host_env: Mapping[str, str]
    builder_type: str = "noop"
    pip_args: tuple[str, ...] = ()


async def resolve(spec: LaunchSpec, resource: str, settings: ResolveSettings) -> ResolvedJob:
    """Fetch the job, put its code in place and make its environment (see module doc)."""
    assert spec.job is not None
    name = spec.job
    if resource not in (LOCAL_PROCESS, LOCAL_CONTAINER):
        raise LaunchError(
            _UNSUPPORTED.format(name=name, what=f"resource {resource!r}")
            + " (W&B jobs run on local-process and local-container)"
        )
    if importlib.util.find_spec("wandb") is None:
        raise LaunchError(
            f"W&B job {name}: running W&B job artifacts needs the `wandb` package in the "
            "agent's environment (pip install 'prefect-launch-agent[wandb]')"
        )
    work = settings.job_dir / "work"
    fetched = settings.job_dir / "wandb-job"
    for stale in (work, fetched):  # a job that never started, resolved again after a restart
        shutil.rmtree(stale, ignore_errors=True)
    settings.job_dir.mkdir(parents=True, exist_ok=True)
    await _fetch(name, fetched, work, settings)
    info = JobInfo.read(name, fetched)
    if info.source_type == "image":
        if resource == LOCAL_PROCESS:
            raise LaunchError(
                f"W&B job {name} is an image job ({info.image}): it runs on local-container, "
                "not local-process (as with W&B's agent, an image cannot run as a local process)"
            )
        return ResolvedJob(info)
    if info.source_type == "repo":
        await _checkout(info, work, fetched, settings)
    requirements = fetched / REQUIREMENTS_FILE
    work.mkdir(parents=True, exist_ok=True)
    if requirements.exists():
        shutil.copyfile(requirements, work / REQUIREMENTS_FILE)
    if resource == LOCAL_CONTAINER:
        if settings.builder_type == "noop":
            raise LaunchError(
                f"W&B job {name} ({info.source_type} job) must be built to run on "
                "local-container: set `builder: {type: docker}` in the agent config or the item"
            )
        if requirements.exists() and not (work / "requirements.txt").exists():
            shutil.copyfile(requirements, work / "requirements.txt")
        return ResolvedJob(info, code_dir=work)
    venv = await ensure_venv(
        _requirement_lines(requirements), settings.cache_dir / "venvs", settings, name
    )
    if info.runtime and info.runtime != f"{sys.version_info[0]}.{sys.version_info[1]}":
        log.warning(
            "W&B job %s was made with Python %s; it runs here with Python %d.%d",
            name,
            info.runtime,
            *sys.version_info[:2],
        )
    return ResolvedJob(info, code_dir=work, venv=venv)


# -- fetching, with W&B's client in a child process --
async def _fetch(name: str, dest: Path, code_dest: Path, settings: ResolveSettings) -> None:
    wandb_home = settings.cache_dir / "wandb"
    env = dict(settings.host_env)
    env.update(settings.credentials)
    env.update(
        {
            "WANDB_CACHE_DIR": str(wandb_home / "cache"),
            "WANDB_CONFIG_DIR": str(wandb_home / "config"),
            "WANDB_DATA_DIR": str(wandb_home / "data"),
            "WANDB_DIR": str(settings.job_dir),
            "WANDB_SILENT": "true",
            "WANDB_ERROR_REPORTING": "false",
        }
    )
    log_path = settings.job_dir / "fetch.log"
    command = [
        sys.executable,
        "-m",
        "agent_lib.wandb_jobs",
        "fetch",
        name,
        str(dest),
        str(code_dest),
    ]
    code = await _run(command, env, log_path, FETCH_TIMEOUT, cwd=settings.job_dir)
    if code != 0:
        lines = [
            line
            for line in read_log_tail(log_path, TAIL_LINES).splitlines()
            if line.startswith("error: ")
        ]
        detail = lines[-1].removeprefix("error: ") if lines else read_log_tail(log_path, 3)
        raise LaunchError(f"W&B job {name}: could not fetch it from W&B: {detail.strip()}")


def fetch_main(name: str, dest: str, code_dest: str) -> int:
    """In the child: download the job artifact and, for an artifact job, its code."""
    import wandb
    from wandb.util import parse_artifact_string

    try:
        api = wandb.Api()
        job = api.artifact(name, type="job")
        job.download(root=dest)
        info = json.loads((Path(dest) / JOB_FILE).read_text())
        source = info.get("source") if isinstance(info, dict) else None
        runnable = isinstance(source, dict) and not (
            source.get("notebook") or source.get("base_image")
        )  # the agent refuses those, saying why: nothing more to fetch
        if runnable and isinstance(source, dict) and info.get("source_type") == "artifact":
            reference = str(source.get("artifact") or "")
            path, _base_url, is_id = parse_artifact_string(reference)
            code = api._artifact_from_id(path) if is_id else api.artifact(path, type="code")
            if code is None:
                raise ValueError(f"its code artifact {reference!r} was not found")
            code.download(root=code_dest)
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    return 0


# -- code from git --
async def _checkout(info: JobInfo, work: Path, fetched: Path, settings: ResolveSettings) -> None:
    assert info.git_remote and info.git_commit
    env = dict(settings.host_env)
    env["GIT_TERMINAL_PROMPT"] = "0"
    log_path = settings.job_dir / "git.log"
    steps = [
        ["git", "clone", "--quiet", "--no-checkout", "--", info.git_remote, str(work)],
        ["git", "-C", str(work), "checkout", "--quiet", "--detach", info.git_commit],
    ]
    if (fetched / DIFF_FILE).exists() and (fetched / DIFF_FILE).stat().st_size:
        steps.append(["git", "-C", str(work), "apply", str(fetched / DIFF_FILE)])
    for step in steps:
        try:
            code = await _run(step, env, log_path, GIT_TIMEOUT, cwd=settings.job_dir)
        except FileNotFoundError:
            message = f"W&B job {info.name}: repo jobs need git on the agent's host"
            raise LaunchError(message) from None
        if code != 0:
            tail = read_log_tail(log_path, 5).strip()
            raise LaunchError(
                f"W&B job {info.name}: `git {step[3] if step[1] == '-C' else step[1]}` of "
                f"{info.git_remote} at {info.git_commit} failed: {tail}"
            )


# -- the job's virtual environment --
def _requirement_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def venv_key(requirements: list[str], pip_args: tuple[str, ...]) -> str:
    """The cache key of a job environment: Python, its requirements, how they are installed."""
    material = {
        "python": [sys.version, os.path.realpath(getattr(sys, "_base_executable", ""))],
        "requirements": requirements,
        "pip_args": list(pip_args),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


async def ensure_venv(
    requirements: list[str], root: Path, settings: ResolveSettings, name: str
) -> Path:
    """The virtual environment for these requirements: made once, then shared (a file lock
    keeps two agents on one data dir from making it twice)."""
    key = venv_key(requirements, settings.pip_args)
    venv = root / key
    if (venv / VENV_READY).exists():
        return venv
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{key}.lock").open("w") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            if not (venv / VENV_READY).exists():
                await _make_venv(venv, requirements, settings, name)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return venv


async def _make_venv(
    venv: Path, requirements: list[str], settings: ResolveSettings, name: str
) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    log_path = settings.job_dir / "venv.log"
    env = dict(settings.host_env)
    code = await _run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], env, log_path, PIP_TIMEOUT
    )
    if code != 0:
        raise BuildError(
            f"W&B job {name}: could not make its virtual environment: "
            f"{read_log_tail(log_path, 5).strip()}"
        )
    if requirements:
        listing = venv / "requirements.txt"
        listing.write_text("".join(f"{line}\n" for line in requirements))
        command = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--disable-pip-version-check",
            "--no-input",
            *settings.pip_args,
            "-r",
            str(listing),
        ]
        code = await _run(command, env, log_path, PIP_TIMEOUT)
        if code != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise BuildError(
                f"W&B job {name}: installing its requirements failed (exit code {code}); "
                f"pip's last lines:\n{read_log_tail(log_path, TAIL_LINES).strip()}"
            )
    (venv / VENV_READY).write_text(json.dumps({"requirements": requirements}))
    log.info("W&B job %s: made its environment %s", name, venv)


async def _run(
    command: list[str],
    env: Mapping[str, str],
    log_path: Path,
    timeout: float,
    cwd: Path | None = None,
) -> int:
    """Run a helper command with its output appended to `log_path`; its exit code."""
    with log_path.open("ab") as output:
        output.write(f"$ {' '.join(command)}\n".encode())
        output.flush()
        process = await asyncio.create_subprocess_exec(
            *command,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return -9
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return str(value) if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_lib.wandb_jobs")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download a W&B job (and its code artifact)")
    fetch.add_argument("name")
    fetch.add_argument("dest")
    fetch.add_argument("code_dest")
    args = parser.parse_args(argv)
    return fetch_main(args.name, args.dest, args.code_dest)


if __name__ == "__main__":
    sys.exit(main())
