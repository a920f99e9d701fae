"""The docker builder: a job's source (a local folder, or a git URL and ref) -> an image.

The source's own Dockerfile is used when it has one; otherwise one is generated from a
configurable base image that installs the job's `requirements.txt` and/or `pyproject.toml`.
The tag is a hash of everything that goes into the build, so the same inputs never build
twice: an image with that tag is reused as it is. The build's output is kept in the job
folder (`build.log`); a failed build raises BuildError (phase `build`) with its last lines.

Settings (the agent's `builder` config, overridden key by key by the spec's `builder`):
`base_image`, `repository`, `dockerfile`, `context`, `build_args`, `target`, `pip_args`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.utils.build import exclude_paths

from agent_lib.config import AgentConfig
from agent_lib.errors import BuildError, SpecError
from agent_lib.runners.base import read_log_tail
from agent_lib.spec import SCHEDULER_PLACEHOLDER_URI, LaunchSpec

log = logging.getLogger(__name__)

DEFAULT_BASE_IMAGE = "python:3.11-slim"
DEFAULT_REPOSITORY = "launch-agent/job"
BUILD_LOG = "build.log"
TAIL_LINES = 30
_GIT_URL = re.compile(r"^(https?://|ssh://|git://|git@|file://.*\.git$)|\.git/?$")


@dataclass(frozen=True)
class BuildSettings:
    """What the docker builder may be told (README, "Builders")."""

    base_image: str = DEFAULT_BASE_IMAGE
    repository: str = DEFAULT_REPOSITORY
    dockerfile: str | None = None
    context: str = "."
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    pip_args: list[str] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> BuildSettings:
        known = {k: v for k, v in settings.items() if k in cls.__dataclass_fields__}
        try:
            made = cls(**known)
        except TypeError as exc:
            raise SpecError(f"builder: {exc}") from exc
        if not isinstance(made.build_args, dict) or not isinstance(made.pip_args, list):
            raise SpecError("builder: build_args must be a mapping and pip_args a list")
        return made


@dataclass(frozen=True)
class Source:
    """Where a job's code comes from: a folder here, or a git repository and ref."""

    location: str
    git: bool
    ref: str | None = None


def source_of(spec: LaunchSpec) -> Source | None:
    """The spec's source (`git.url` + `git.version`, or `uri`); None when it names none."""
    ref = spec.git.version if spec.git else None
    if spec.git and spec.git.url:
        return Source(spec.git.url, git=True, ref=ref)
    uri = spec.uri
    if not uri or uri == SCHEDULER_PLACEHOLDER_URI:
        return None
    if _GIT_URL.search(uri):
        return Source(uri, git=True, ref=ref)
    return Source(uri.removeprefix("file://"), git=False)


class DockerBuilder:
    """Builds (or reuses) the image of a job whose spec has a source; else its image."""

    type = "docker"

    def __init__(self, config: AgentConfig, settings: dict[str, Any]) -> None:
        self._settings = BuildSettings.from_settings(settings)

    async def build_image(self, spec: LaunchSpec, job_dir: Path) -> str | None:
        source = source_of(spec)
        if source is None:
            return spec.image  # nothing to build: the job names its image
        return await asyncio.to_thread(self.build, source, job_dir)

    def build(self, source: Source, job_dir: Path) -> str:
        """Blocking: fetch the source, hash it, build unless the tag exists; returns the tag."""
        job_dir.mkdir(parents=True, exist_ok=True)
        build_log = job_dir / BUILD_LOG
        with build_log.open("a") as out:
            root = fetch_source(source, job_dir / "source", out)
            context = _inside(root, self._settings.context, "context")
            dockerfile, content_id = self._dockerfile(context, job_dir)
            tag = self._tag(content_id, dockerfile)
            client = _client()
            if _image_exists(client, tag):
                out.write(f"reusing image {tag}: it was built from the same inputs\n")
                log.info("reusing image %s", tag)
                return tag
            out.write(f"building image {tag} from {source.location}\n")
            out.flush()
            _run_build(client, context, dockerfile, tag, self._settings, out)
        if not _image_exists(client, tag):
            raise _failure("the build ended without an image", build_log)
        return tag

    def _dockerfile(self, context: Path, job_dir: Path) -> tuple[Path, str]:
        """The Dockerfile to build with, and a hash of the context it builds."""
        settings = self._settings
        if settings.dockerfile:
            dockerfile = _inside(context, settings.dockerfile, "dockerfile")
            if not dockerfile.is_file():
                raise BuildError(f"builder.dockerfile {settings.dockerfile!r} is not in the source")
        elif (context / "Dockerfile").is_file():
            dockerfile = context / "Dockerfile"
        else:
            dockerfile = job_dir / "Dockerfile.generated"
            dockerfile.write_text(generated_dockerfile(context, settings))
        return dockerfile, hash_context(context)

    def _tag(self, content_id: str, dockerfile: Path) -> str:
        settings = self._settings
        inputs = {
            "content": content_id,
            "dockerfile": dockerfile.read_text(),
            "build_args": settings.build_args,
            "target": settings.target,
        }
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        return f"{settings.repository}:{digest[:24]}"


def generated_dockerfile(context: Path, settings: BuildSettings) -> str:
    """A Dockerfile for a Python job: dependencies first (a layer that changes rarely)."""
    pip = " ".join(["python", "-m", "pip", "install", "--no-cache-dir", *settings.pip_args])
    lines = [
        f"FROM {settings.base_image}",
        "ENV PYTHONUNBUFFERED=1",
        "WORKDIR /app",
    ]
    if (context / "requirements.txt").is_file():
        lines += ["COPY requirements.txt ./", f"RUN {pip} -r requirements.txt"]
    lines.append("COPY . ./")
    if (context / "pyproject.toml").is_file():
        lines.append(f"RUN {pip} .")
    return "\n".join(lines) + "\n"


def hash_context(context: Path) -> str:
    """A hash of the files the build sees (.dockerignore applied, `.git` left out)."""
    patterns = _dockerignore(context)
    digest = hashlib.sha256()
    for rel in sorted(exclude_paths(str(context), patterns)):
        if rel == ".git" or rel.startswith(".git/"):
            continue
        path = context / rel
        if path.is_symlink():
            digest.update(f"L {rel} {os.readlink(path)}\n".encode())
        elif path.is_file():
            executable = os.access(path, os.X_OK)
            digest.update(f"F {rel} {int(executable)} {path.stat().st_size}\n".encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _dockerignore(context: Path) -> list[str]:
    ignore = context / ".dockerignore"
    if not ignore.is_file():
        return []
    lines = [line.strip() for line in ignore.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def fetch_source(source: Source, dest: Path, out: Any) -> Path:
    """A local folder as it is, or a shallow fetch of the git ref into `dest`."""
    if not source.git:
        root = Path(source.location).expanduser()
        if not root.is_dir():
            raise BuildError(f"source folder {source.location!r} does not exist on this machine")
        return root.resolve()
    ref = source.ref or "HEAD"
    out.write(f"fetching {ref} of {source.location}\n")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _git(out, "init", "--quiet", str(dest))
    _git(out, "-C", str(dest), "fetch", "--quiet", "--depth", "1", source.location, ref)
    _git(out, "-C", str(dest), "checkout", "--quiet", "FETCH_HEAD")
    return dest


def _git(out: Any, *args: str) -> None:
    out.flush()
    try:
        done = subprocess.run(
            ["git", *args], stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False
        )
    except FileNotFoundError as exc:
        raise BuildError("git is not installed: install it to build from a git source") from exc
    if done.returncode != 0:
        raise BuildError(
            f"`git {' '.join(args)}` failed with exit code {done.returncode}: check the "
            "git URL and ref (git.url / git.version) and that this machine can reach them"
        )


def _inside(root: Path, relative: str, what: str) -> Path:
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise SpecError(f"builder.{what} {relative!r} points outside the source")
    return path


def _client() -> Any:
    try:
        return docker.from_env(timeout=120)
    except docker.errors.DockerException as exc:
        raise BuildError(f"cannot reach the Docker engine ({exc}); is dockerd running?") from exc


def _image_exists(client: Any, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _run_build(
    client: Any, context: Path, dockerfile: Path, tag: str, settings: BuildSettings, out: Any
) -> None:
    """`docker build` through the API, its output into the build log; errors raise."""
    log_path = Path(out.name)
    try:
        stream = client.api.build(
            path=str(context),
            dockerfile=str(dockerfile),
            tag=tag,
            buildargs=settings.build_args or None,
            target=settings.target,
            rm=True,
            forcerm=True,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                out.write(chunk["stream"])
            elif "status" in chunk:
                out.write(f"{chunk['status']} {chunk.get('progress', '')}\n")
            if "error" in chunk:
                out.write(f"ERROR: {chunk['error']}\n")
                out.flush()
                raise _failure(chunk["error"].strip(), log_path)
            out.flush()
    except docker.errors.DockerException as exc:
        out.write(f"ERROR: {exc}\n")
        out.flush()
        raise _failure(str(exc), log_path) from exc


def _failure(reason: str, build_log: Path) -> BuildError:
    tail = read_log_tail(build_log, TAIL_LINES).rstrip()
    return BuildError(f"docker build failed: {reason}\n--- last lines of {build_log} ---\n{tail}")
