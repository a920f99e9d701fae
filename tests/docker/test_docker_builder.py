"""The docker builder on a real engine: from a folder, from a git repo, cached, broken."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_lib.states import ItemState
from tests.docker.conftest import Harness

pytestmark = pytest.mark.timeout(180)

REPOSITORY = "launch-agent-test/job"


def python_job(source: Path, code: str) -> dict[str, Any]:
    return {
        "resource": "local-container",
        "uri": str(source),
        "overrides": {"entry_point": ["python", "-c", code]},
    }


def write_python_project(root: Path, token: str) -> None:
    """A job with a pyproject package and a requirements.txt (satisfied offline)."""
    (root / "tinyjob").mkdir(parents=True)
    (root / "tinyjob" / "__init__.py").write_text(f"GREETING = 'hello {token}'\n")
    (root / "requirements.txt").write_text("pip\n")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "tinyjob"\nversion = "0.1"\n'
    )


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def builder_harness(harness: Harness, python_base: str) -> Iterator[Harness]:
    harness.config["builder"] = {
        "type": "docker",
        "base_image": python_base,
        "repository": REPOSITORY,
        "pip_args": ["--no-index", "--no-build-isolation"],
    }
    yield harness
    for image in harness.client.images.list(name=REPOSITORY):  # each run builds anew
        for tag in image.tags:
            with contextlib.suppress(Exception):
                harness.client.images.remove(tag)


def test_builds_from_a_folder_then_reuses_the_image(
    builder_harness: Harness, tmp_path: Path
) -> None:
    source = tmp_path / "project"
    token = uuid.uuid4().hex[:8]  # new content: the first build really builds
    write_python_project(source, token)
    spec = python_job(source, "import tinyjob; print(tinyjob.GREETING)")
    first = builder_harness.push(spec)
    builder_harness.run(timeout=150)

    assert builder_harness.item(first).state is ItemState.FINISHED, builder_harness.item(first)
    assert f"hello {token}" in builder_harness.output(first)
    first_log = (builder_harness.job_dir(first) / "build.log").read_text()
    assert "Successfully tagged" in first_log
    assert (
        "RUN python -m pip install"
        in (builder_harness.job_dir(first) / "Dockerfile.generated").read_text()
    )

    again = builder_harness.push(spec)
    builder_harness.run(timeout=60)
    assert builder_harness.item(again).state is ItemState.FINISHED
    assert f"hello {token}" in builder_harness.output(again)
    second_log = (builder_harness.job_dir(again) / "build.log").read_text()
    assert "reusing image" in second_log and "Step 1/" not in second_log


def test_builds_from_a_git_repo_at_a_ref(
    builder_harness: Harness, busybox: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / "Dockerfile").write_text(f"FROM {busybox}\nCOPY job.sh /job.sh\n")
    token = uuid.uuid4().hex[:8]
    (repo / "job.sh").write_text(f"echo version one {token}\n")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "one")
    first_commit = git(repo, "rev-parse", "HEAD")
    (repo / "job.sh").write_text(f"echo version two {token}\n")
    git(repo, "commit", "--quiet", "-am", "two")

    def at(ref: str) -> dict[str, Any]:
        return {
            "resource": "local-container",
            "git": {"url": str(repo), "version": ref},
            "overrides": {"entry_point": ["sh", "/job.sh"]},
        }

    old = builder_harness.push(at(first_commit))
    new = builder_harness.push(at("main"))
    builder_harness.run(timeout=120, max_jobs=1)

    for item_id, text in ((old, "version one"), (new, "version two")):
        info = builder_harness.item(item_id)
        assert info.state is ItemState.FINISHED, info
        assert f"{text} {token}" in builder_harness.output(item_id)


def test_a_broken_dockerfile_fails_the_item_in_phase_build(
    builder_harness: Harness, busybox: str, tmp_path: Path
) -> None:
    source = tmp_path / "broken"
    source.mkdir()
    (source / "Dockerfile").write_text(
        f"FROM {busybox}\nRUN echo compiling the thing && echo 'missing header' >&2 && exit 9\n"
    )
    broken = builder_harness.push(
        {"resource": "local-container", "uri": str(source), "overrides": {"args": ["true"]}}
    )
    builder_harness.run(timeout=60)

    info = builder_harness.item(broken)
    assert info.state is ItemState.FAILED and info.failure_phase == "build", info
    assert "docker build failed" in (info.failure_message or "")
    error_log = "".join(info.files.values())
    assert "missing header" in error_log  # the build log's tail
    assert "missing header" in (builder_harness.job_dir(broken) / "build.log").read_text()
    assert builder_harness.containers() == []
