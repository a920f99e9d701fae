"""Helpers for sweep tests: create sweeps through the CLI, read them back, a training job."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import yaml

from agent_lib.cli import main
from tests.helpers import PYTHON

# A plain job: reads its parameters from WANDB_CONFIG (as wandb.config would), notes its
# start in a ledger (one line per start: no run may start twice), then prints one JSON
# object per step. `steps`, `delay` (seconds between steps) come from the parameters too.
TRAIN = """
import json, os, sys, time
cfg = json.loads(os.environ["WANDB_CONFIG"])
ledger = sys.argv[1]
fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(fd, (os.environ["WANDB_RUN_ID"] + " " + json.dumps(cfg, sort_keys=True) + "\\n").encode())
os.close(fd)
x, y = float(cfg.get("x", 0)), float(cfg.get("y", 0))
loss = (x - 1.0) ** 2 + (y + 0.5) ** 2 + float(cfg.get("bias", 0))
steps = int(cfg.get("steps", 1))
delay = float(cfg.get("delay", 0))
for step in range(steps):
    if step:
        time.sleep(delay)
    print(json.dumps({"loss": loss + (steps - 1 - step) * 0.01, "_step": step}), flush=True)
"""


def write_train(tmp_path: Path) -> list[str]:
    """The command that runs the training job (with its ledger as first argument)."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    return [PYTHON, str(script), str(tmp_path / "ledger.txt")]


def ledger(tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    path = tmp_path / "ledger.txt"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        run_id, _, cfg = line.partition(" ")
        rows.append((run_id, json.loads(cfg)))
    return rows


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def create_sweep(
    db_url: str, data_dir: Path, config: dict[str, Any], command: list[str], *extra: str
) -> str:
    path = data_dir / "sweep.yaml"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    code, out = cli(
        "sweep", "create", str(path), "-q", "default", "--backend", db_url,
        "--data-dir", str(data_dir), "--json", *extra, "--", *command,
    )  # fmt: skip
    assert code == 0, out
    return str(json.loads(out)["id"])


def show(db_url: str, data_dir: Path, sweep_id: str) -> dict[str, Any]:
    code, out = cli("sweep", "show", sweep_id, "--backend", db_url, "--data-dir", str(data_dir),
                    "--json")  # fmt: skip
    assert code == 0, out
    data: dict[str, Any] = json.loads(out)
    return data


def change(db_url: str, data_dir: Path, verb: str, sweep_id: str) -> dict[str, Any]:
    code, out = cli("sweep", verb, sweep_id, "--backend", db_url, "--data-dir", str(data_dir),
                    "--json")  # fmt: skip
    assert code == 0, out
    data: dict[str, Any] = json.loads(out)
    return data
