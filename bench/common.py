"""What the bench scripts share: an agent as a real process, and latency summaries."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


def start_agent(
    db_url: str, data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`launch-agent run` as its own process with default settings (plus `env`)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent_lib.cli",
            "run",
            "--backend",
            db_url,
            "--data-dir",
            str(data_dir),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def latency_summary(what: str, values: list[float]) -> str:
    """`what: median .. ms, p95 .. ms, min .. ms, max .. ms (n=..)`, from seconds."""
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return (
        f"{what}: median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, "
        f"min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms (n={len(ms)})"
    )


@contextlib.contextmanager
def bench_database(kind: str, workdir: Path, prefix: str) -> Iterator[str]:
    """A fresh queue database: a SQLite file in `workdir`, or a PostgreSQL database
    (LAUNCH_AGENT_TEST_POSTGRES_URL's server) dropped at the end."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'queue.db'}"
        return
    from tests.backend.pg import fresh_database

    with fresh_database(prefix) as url:
        yield url
