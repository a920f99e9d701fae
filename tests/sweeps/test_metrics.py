"""How runs report their metric: a W&B-instrumented job, unchanged, and plain JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

from agent_lib.backends import SqlBackend
from agent_lib.sweeps.metrics import RunMetrics
from tests.helpers import PYTHON, fast_config, run_agent
from tests.sweeps.helpers import create_sweep, show

# What a user's W&B training script looks like; nothing in it knows about this agent.
WANDB_TRAIN = """
import json, sys
import wandb

run = wandb.init(project="sweeps-test", mode="offline")
lr = wandb.config["lr"]
for step in range(3):
    wandb.log({"acc": lr * (step + 1), "other": 1.0})
wandb.summary["acc"] = lr * 10
print("config " + json.dumps(dict(wandb.config)), flush=True)
run.finish()
"""


def test_a_wandb_instrumented_job_reports_its_metric_unchanged(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "wandb_train.py"
    script.write_text(WANDB_TRAIN)
    config = {
        "method": "grid",
        "metric": {"name": "acc", "goal": "maximize"},
        "parameters": {"lr": {"values": [0.1, 0.2]}},
        "scheduler": {"num_workers": 2, "poll_interval": 0.05},
    }
    sweep_id = create_sweep(db_url, tmp_path, config, [PYTHON, str(script)])
    run_agent(backend, fast_config(tmp_path, max_jobs=2, exit_when_idle=True), timeout=120)

    data = show(db_url, tmp_path, sweep_id)
    assert [r["state"] for r in data["runs"]] == ["finished", "finished"], data["runs"]
    by_lr = {r["params"]["lr"]: r for r in data["runs"]}
    # The summary wins (the job set it), and every wandb.log step was seen.
    assert by_lr[0.1]["value"] == 1.0 and by_lr[0.2]["value"] == 2.0
    assert by_lr[0.1]["steps"] == 3
    assert data["best"]["params"] == {"lr": 0.2}
    runs = backend.sweep_runs(sweep_id)
    assert runs[0].intermediate  # the history, step by step
    for run in runs:  # wandb.config saw the parameters, as under a W&B sweep
        info = backend.get_item(run.item_id)
        assert info is not None
        out = (tmp_path / "jobs" / f"{run.item_id}-{run.run_id}" / "output.log").read_text()
        assert "config " + json.dumps(run.params) in out


def test_plain_json_lines_on_stdout_or_in_metrics_jsonl(tmp_path: Path) -> None:
    job = tmp_path / "7-abc"
    (job / "work").mkdir(parents=True)
    log = job / "output.log"
    log.write_text('starting\n{"loss": 0.9}\n[stderr] noise\n{"loss": 0.5, "_step": 4}\n{"lo')
    reader = RunMetrics(job, "abc", "loss")
    first = reader.read()
    assert first.steps == {0: 0.9, 4: 0.5} and first.value == 0.5
    with log.open("a") as handle:  # the rest of the half-written line, then more
        handle.write('ss": 7}\n{"acc": 1}\n{"loss": 0.25, "_step": 5}\n')
    assert reader.read().steps == {0: 0.9, 4: 0.5, 2: 7.0, 5: 0.25}  # third metric line

    other = tmp_path / "8-def"
    (other / "work").mkdir(parents=True)
    (other / "work" / "metrics.jsonl").write_text('{"val": {"loss": 0.3}, "step": 2}\n')
    assert RunMetrics(other, "def", "val.loss").read().steps == {2: 0.3}
