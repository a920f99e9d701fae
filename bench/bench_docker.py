"""Benchmarks of the local-container runner and the docker builder on the real engine.

Measures, with the agent as a real `launch-agent run` process and default settings:
  1. push -> container start on an idle agent (the engine's StartedAt of the container);
  2. container exit -> next container start with max_jobs 1 (FinishedAt -> StartedAt);
  3. a docker build of a small Python project: uncached (new content) vs cached (same
     inputs: the tag exists, nothing is built).
Images are the local test images (tests/docker/images.py); nothing is pulled.
Run: .venv/bin/python bench/bench_docker.py [--rounds N]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import docker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent_lib.backends import open_backend  # noqa: E402
from agent_lib.builders.docker import DockerBuilder, Source  # noqa: E402
from agent_lib.config import AgentConfig  # noqa: E402
from agent_lib.states import TERMINAL_ITEM_STATES  # noqa: E402
from bench import common  # noqa: E402
from tests.docker.images import busybox_image, python_image  # noqa: E402


def engine_time(stamp: str) -> float:
    """Docker's RFC 3339 timestamps (nanoseconds) as epoch seconds."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(head + "+00:00").timestamp()
    return whole + float(f"0.{frac or '0'}")


def start_agent(db_url: str, data_dir: Path, queue: str, *args: str) -> subprocess.Popen[bytes]:
    """Containers are kept after they end, so the bench can read the engine's timestamps."""
    return common.start_agent(
        db_url, data_dir, "--queue", queue, *args, env={"LAUNCH_AGENT_REMOVE_CONTAINERS": "false"}
    )


def wait_ended(db: Any, ids: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(db.get_item(i).state in TERMINAL_ITEM_STATES for i in ids):
            return
        time.sleep(0.05)
    raise SystemExit(f"items {ids} did not end in {timeout}s")


def container_times(client: Any, queue: str, item_id: str) -> tuple[float, float]:
    (container,) = client.containers.list(
        all=True, filters={"label": [f"launch-agent.queue={queue}", f"launch-agent.item={item_id}"]}
    )
    state = container.attrs["State"]
    return engine_time(state["StartedAt"]), engine_time(state["FinishedAt"])


def spec(image: str, script: str) -> dict[str, Any]:
    return {
        "resource": "local-container",
        "docker": {"docker_image": image},
        "overrides": {"entry_point": ["sh", "-c", script]},
    }


def bench_runner(client: Any, image: str, rounds: int, work: Path) -> None:
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    db_url = f"sqlite:///{work / 'q.db'}"
    db = open_backend(db_url)
    agent = start_agent(db_url, work / "data", queue, "--max-jobs", "1")
    try:
        db.push_to_run_queue(queue, spec(image, "true"), None, None, None)  # warm up
        time.sleep(2.0)
        latencies = []
        for _ in range(rounds):
            pushed = time.time()
            item = db.push_to_run_queue(queue, spec(image, "true"), None, None, None)
            wait_ended(db, [item])
            latencies.append(container_times(client, queue, item)[0] - pushed)
            time.sleep(0.3)
        ids = [
            db.push_to_run_queue(queue, spec(image, "true"), None, None, None)
            for _ in range(rounds + 1)
        ]
        wait_ended(db, ids)
        times = [container_times(client, queue, i) for i in ids]
        reuse = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(times)]
    finally:
        agent.terminate()
        agent.wait(30)
        for container in client.containers.list(
            all=True, filters={"label": f"launch-agent.queue={queue}"}
        ):
            container.remove(force=True)
        db.close()
    report("push -> container start (idle agent)", latencies)
    report("container exit -> next container start (max_jobs 1)", reuse)


def bench_build(client: Any, base: str, rounds: int, work: Path) -> None:
    builder = DockerBuilder(
        AgentConfig.load(None, data_dir=work / "data"),
        {
            "base_image": base,
            "repository": "launch-agent-bench/job",
            "pip_args": ["--no-index", "--no-build-isolation"],
        },
    )
    uncached, cached = [], []
    for n in range(rounds):
        source = work / f"src{n}"
        (source / "benchjob").mkdir(parents=True)
        (source / "benchjob" / "__init__.py").write_text(f"TOKEN = {uuid.uuid4().hex!r}\n")
        (source / "requirements.txt").write_text("pip\n")
        (source / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
            '[project]\nname = "benchjob"\nversion = "0.1"\n'
        )
        for bucket in (uncached, cached):
            began = time.perf_counter()
            tag = builder.build(Source(str(source), git=False), work / f"job{n}")
            bucket.append(time.perf_counter() - began)
        client.images.remove(tag)
    report("docker build, uncached (new content)", uncached)
    report("docker build, cached (same inputs, tag reused)", cached)


def report(what: str, values: list[float]) -> None:
    print(common.latency_summary(what, values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    client = docker.from_env()
    busybox, python = busybox_image(client), python_image(client)
    with tempfile.TemporaryDirectory() as tmp:
        bench_runner(client, busybox, args.rounds, Path(tmp))
        bench_build(client, python, max(2, args.rounds // 3), Path(tmp))


if __name__ == "__main__":
    main()
