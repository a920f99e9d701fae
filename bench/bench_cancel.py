"""Cancel latency (not a test): from `launch-agent cancel` to the job's process being gone.

Usage (PostgreSQL from `eval "$(scripts/services)"` for `--backend postgresql`):
    .venv/bin/python bench/bench_cancel.py [--backend sqlite|postgresql] [--rounds 20]

An agent runs as its own process with default settings. Each round pushes a `sleep 600`
job, waits until it runs, then times `launch-agent cancel ITEM` (a CLI process, as a user
would run it) until the job's process has exited. The CLI's own start-up is included: it
is part of what a user waits for. Prints the median and p95 of that, and of the time from
the stop request's commit (the item's stop_requested_at) to the process's end: the agent's
share.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault(
    "LAUNCH_AGENT_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)

from agent_lib.backends import SqlBackend, open_backend
from bench.common import bench_database, latency_summary, start_agent


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def one_round(backend: SqlBackend, url: str, pids: Path) -> tuple[float, float]:
    """(from running the CLI, from the stop request's commit) to the job's process gone."""
    script = f'echo "$$" > {pids}; exec sleep 600'
    spec = {"resource": "local-process", "overrides": {"entry_point": ["sh", "-c", script]}}
    pids.unlink(missing_ok=True)
    item_id = backend.push_to_run_queue("default", spec)
    deadline = time.monotonic() + 60
    while not (pids.exists() and pids.read_text().strip()):
        if time.monotonic() > deadline:
            raise RuntimeError("the job did not start within 60 s")
        time.sleep(0.01)
    pid = int(pids.read_text())
    asked = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "agent_lib.cli", "cancel", item_id, "--backend", url],
        check=True,
        capture_output=True,
    )
    while alive(pid):
        if time.monotonic() - asked > 120:
            raise RuntimeError("the job was not stopped within 120 s")
        time.sleep(0.002)
    gone_wall, gone = time.time(), time.monotonic()
    info = backend.get_item(item_id)
    assert info is not None and info.stop_requested_at is not None
    return gone - asked, gone_wall - info.stop_requested_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_database(args.backend, Path(tmp), "la_bench_cancel") as url,
    ):
        backend: SqlBackend = open_backend(url)  # type: ignore[assignment]
        agent = start_agent(url, Path(tmp) / "agent")
        try:
            rounds = [one_round(backend, url, Path(tmp) / "pid") for _ in range(args.rounds)]
        finally:
            agent.terminate()
            agent.wait(timeout=60)
            backend.close()
    print(
        latency_summary(
            f"`launch-agent cancel` -> job gone ({args.backend})", [r[0] for r in rounds]
        )
    )
    print(
        latency_summary(f"stop request stored -> job gone ({args.backend})", [r[1] for r in rounds])
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
