"""How fast the CLI answers, against the cost of importing what it must (not a test).

    .venv/bin/python bench/bench_cli.py [--rounds 9]

Times, as whole processes (what a user waits for), the median of `--rounds` runs of:
`python -c "import sqlalchemy, pydantic"` (the floor the issue compares with),
`launch-agent --help`, and `launch-agent push` to a SQLite queue. Also the idle agent's
CPU use: an idle `launch-agent run` process's user+system time over 20 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import start_agent

VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "launch-agent")
# What `push` must import to check a spec as the agent would and to write it to SQLite: the
# floor under push's time, short of dropping pydantic-settings or the spec's models.
PUSH_NEEDS = "sqlalchemy.dialects.sqlite, pydantic_settings, agent_lib.spec"


def wall(command: list[str], rounds: int, env: dict[str, str]) -> float:
    """Median wall time of `command`, in seconds."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu_percent(root: Path, seconds: float = 20.0) -> float:
    """CPU share of an idle agent (default settings) on an empty SQLite queue."""
    db_url = f"sqlite:///{root / 'idle.db'}"
    agent = start_agent(db_url, root / "idle-data", "-q", "idle")
    try:
        time.sleep(5)  # past start-up
        before = cpu_seconds(agent.pid)
        time.sleep(seconds)
        used = cpu_seconds(agent.pid) - before
    finally:
        agent.terminate()
        agent.wait(30)
    return 100 * used / seconds


def rows(rounds: int) -> list[tuple[str, str, str]]:
    """(what, measured, goal) for the summary table."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "LAUNCH_AGENT_DATA_DIR": str(root / "data")}
        floor = wall([sys.executable, "-c", "import sqlalchemy, pydantic"], rounds, env)
        helped = wall([CLI, "--help"], rounds, env)
        pushed = wall([CLI, "push", "-q", "bench", "--", "true"], rounds, env)
        needs = wall([sys.executable, "-c", f"import {PUSH_NEEDS}"], rounds, env)
        idle = idle_cpu_percent(root)
    return [
        ("import sqlalchemy, pydantic (floor)", f"{floor * 1000:.0f} ms", ""),
        ("launch-agent --help", f"{helped * 1000:.0f} ms ({helped / floor:.2f}x)", "<= 1.5x"),
        (
            "launch-agent push (SQLite)",
            f"{pushed * 1000:.0f} ms ({pushed / floor:.2f}x)",
            "<= 1.5x",
        ),
        (
            "  what push cannot skip: SQLite dialect, pydantic-settings, the spec's models",
            f"{needs * 1000:.0f} ms ({needs / floor:.2f}x)",
            "",
        ),
        ("idle agent CPU (SQLite, defaults)", f"{idle:.2f} %", "not burning CPU"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    for what, measured, goal in rows(args.rounds):
        print(f"{what}: {measured}" + (f"  (goal {goal})" if goal else ""))


if __name__ == "__main__":
    main()
