"""Sweep configs: W&B's format read, mapped onto Optuna, refused with the key named."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from agent_lib.cli import main
from agent_lib.errors import SpecError
from agent_lib.sweeps.config import parse_sweep_config
from agent_lib.sweeps.runs import expand_args, run_spec, run_template

BASE: dict[str, Any] = {"method": "random", "metric": {"name": "loss"}}


def config(**parameters: Any) -> dict[str, Any]:
    return {**BASE, "parameters": parameters}


def test_parameter_specs_map_onto_optuna_distributions() -> None:
    parsed = parse_sweep_config(
        config(
            opt={"values": ["adam", "sgd"]},
            layers={"min": 1, "max": 4},
            dropout={"min": 0.0, "max": 0.5},
            lr={"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
            wd={"distribution": "log_uniform", "min": -5, "max": -1},
            step={"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25},
            inv={"distribution": "inv_log_uniform_values", "min": 0.01, "max": 1},
            batch={"value": 32},
            model={"parameters": {"width": {"values": [64, 128]}, "act": {"value": "relu"}}},
        )
    )
    dists = {p.name: p.optuna_distribution() for p in parsed.params}
    assert dists["opt"] == CategoricalDistribution(("adam", "sgd"))
    assert dists["layers"] == IntDistribution(1, 4)
    assert dists["dropout"] == FloatDistribution(0.0, 0.5)
    assert dists["lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    wd = dists["wd"]
    assert isinstance(wd, FloatDistribution) and wd.log
    assert math.isclose(wd.low, math.exp(-5)) and math.isclose(wd.high, math.exp(-1))
    assert dists["step"] == FloatDistribution(0, 1, step=0.25)
    assert dists["inv"] == FloatDistribution(0.01, 1, log=True)
    assert dists["batch"] is None and dists["model.act"] is None
    assert dists["model.width"] == CategoricalDistribution((64, 128))
    run = parsed.run_config({"opt": "sgd", "model.width": 128, "layers": 2})
    assert run == {"opt": "sgd", "layers": 2, "batch": 32, "model": {"width": 128, "act": "relu"}}


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"parameters": {"a": {"values": [1]}}}, "method: is required"),
        ({**BASE, "method": "hill", "parameters": {}}, "method: must be grid, random or bayes"),
        ({**BASE, "parameter": {}}, "parameter: unknown key (did you mean 'parameters'?)"),
        (BASE, "parameters: is required"),
        (config(a={"min": 1}), "parameters.a: give value, values, or min and max"),
        (config(a={"values": []}), "parameters.a.values: must be a non-empty list"),
        (config(a={"min": 2, "max": 1}), "parameters.a.max: must be greater than min"),
        (config(a={"min": 0, "max": "x"}), "parameters.a.max: must be a finite number"),
        (config(a={"mu": 0, "sigma": 1}), "parameters.a.distribution: normal cannot be mapped"),
        (
            config(a={"values": [1, 2], "probabilities": [0.5, 0.5]}),
            "parameters.a.probabilities: categorical_w cannot be mapped",
        ),
        (
            config(a={"distribution": "q_log_uniform_values", "min": 1, "max": 9, "q": 1}),
            "parameters.a.distribution: q_log_uniform_values cannot be mapped",
        ),
        (config(a={"distribution": "zipf", "min": 1, "max": 2}), "unknown distribution 'zipf'"),
        (config(a={"vals": [1]}), "parameters.a.vals: unknown key (did you mean 'values'?)"),
        (
            config(m={"parameters": {"lr": {"min": 0.1, "max": 0.01}}}),
            "parameters.m.parameters.lr.max: must be greater than min",
        ),
        (
            {"method": "grid", "parameters": {"lr": {"min": 0.0, "max": 1.0}}},
            "parameters.lr: method grid needs a finite set of values",
        ),
        (
            {"method": "bayes", "parameters": {"a": {"min": 0.0, "max": 1.0}}},
            "metric: method bayes needs metric.name",
        ),
        ({**config(a={"values": [1]}), "metric": {"goal": "up"}}, "metric.name: must be"),
        (
            {**config(a={"values": [1]}), "metric": {"name": "l", "goal": "up"}},
            "metric.goal: must be minimize or maximize",
        ),
        ({**config(a={"values": [1]}), "run_cap": 0}, "run_cap: must be a whole number"),
        (
            {**config(a={"values": [1]}), "early_terminate": {"type": "median"}},
            "early_terminate.type: must be hyperband",
        ),
        (
            {**config(a={"values": [1]}), "early_terminate": {"type": "hyperband"}},
            "early_terminate.min_iter: is required",
        ),
        (
            {
                **config(a={"values": [1]}),
                "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 1},
            },
            "early_terminate.eta: must be a whole number of at least 2",
        ),
        (
            {**config(a={"values": [1]}), "command": ["python", "${args}", "${args_json}"]},
            "command: may hold one ${args...} macro",
        ),
        ({**config(a={"values": [1]}), "scheduler": {"workers": 2}}, "scheduler.workers"),
    ],
)
def test_bad_configs_fail_naming_the_key(raw: dict[str, Any], names: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_sweep_config(raw)
    assert names in str(caught.value)


def test_the_cli_refuses_a_bad_config_with_exit_2_and_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("method: grid\nparameters:\n  lr: {distribution: normal, mu: 0, sigma: 1}\n")
    code = main(["sweep", "create", str(path), "--data-dir", str(tmp_path), "--", "true"])
    err = capsys.readouterr().err
    assert code == 2
    assert "parameters.lr.distribution: normal cannot be mapped" in err
    path.write_text("method: [grid\n")
    assert main(["sweep", "create", str(path), "--data-dir", str(tmp_path), "--", "true"]) == 2
    assert "not valid YAML or JSON" in capsys.readouterr().err
    path.write_text("method: grid\nparameters: {a: {values: [1]}}\n")
    assert main(["sweep", "create", str(path), "--data-dir", str(tmp_path)]) == 2
    assert "say what each run runs" in capsys.readouterr().err
    assert main(["sweep", "show", "nosuch", "--data-dir", str(tmp_path)]) == 3


def test_command_macros_follow_wandb() -> None:
    params = {"lr": 0.1, "flag": True, "off": False, "m": {"w": 2}}
    assert expand_args("${args}", params) == ["--lr=0.1", "--flag=True", "--off=False", "--m.w=2"]
    assert expand_args("${args_no_equals}", {"lr": 0.1}) == ["--lr", "0.1"]
    assert expand_args("${args_no_hyphens}", {"lr": 0.1}) == ["lr=0.1"]
    assert expand_args("${args_no_boolean_flags}", params) == ["--lr=0.1", "--flag", "--m.w=2"]
    assert expand_args("${args_json}", {"lr": 0.1}) == ['{"lr": 0.1}']

    parsed = parse_sweep_config({**config(lr={"values": [0.1]}), "program": "train.py"})
    spec = run_spec(run_template(parsed), "s1", "s1-0", "r1", {"lr": 0.1})
    assert spec["overrides"]["entry_point"] == ["/usr/bin/env", "python", "train.py", "--lr=0.1"]
    assert spec["overrides"]["run_config"] == {"lr": 0.1}
    assert (spec["sweep_id"], spec["run_id"], spec["name"]) == ("s1", "r1", "s1-0")

    custom = parse_sweep_config(
        {
            **config(lr={"values": [0.1]}),
            "command": ["${interpreter}", "t.py", "${args_no_hyphens}", "--fixed"],
        }
    )
    spec = run_spec(run_template(custom), "s1", "n", "r", {"lr": 0.1})
    assert spec["overrides"]["entry_point"] == ["python", "t.py", "lr=0.1", "--fixed"]

    spec = run_spec(run_template(parsed, job="train"), "s1", "n", "r", {"lr": 0.1})
    assert spec["job"] == "train" and spec["overrides"]["args"] == ["--lr=0.1"]
    assert "entry_point" not in spec["overrides"]

    spec = run_spec(run_template(parsed, command=["python", "x.py"]), "s1", "n", "r", {"lr": 1})
    assert spec["overrides"]["entry_point"] == ["python", "x.py", "--lr=1"]
