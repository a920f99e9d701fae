"""W&B's sweep config, read and checked; its parameters as Optuna distributions.

A bad config is refused with one message naming the key (`parameters.lr.max: ...`).

How W&B's parameter spec maps onto Optuna (what cannot be mapped is refused):

| W&B                                   | Optuna                                               |
| ------------------------------------- | ---------------------------------------------------- |
| `value: V`                            | not searched: V in every run                         |
| `values: [...]`                       | CategoricalDistribution (grid: the grid's axis)      |
| `int_uniform` (`min`/`max` integers)  | IntDistribution(min, max)                            |
| `uniform` (`min`/`max`)               | FloatDistribution(min, max)                          |
| `q_uniform` (`min`, `max`, `q`)       | FloatDistribution(min, max, step=q)                  |
| `log_uniform_values` (`min`, `max`)   | FloatDistribution(min, max, log=True)                |
| `log_uniform` (`min`, `max`: logs)    | FloatDistribution(e^min, e^max, log=True)            |
| `inv_log_uniform_values`              | FloatDistribution(min, max, log=True) (*)            |
| `inv_log_uniform` (`min`, `max`)      | FloatDistribution(e^-max, e^-min, log=True)          |
| `parameters: {...}` (nested)          | flattened to dotted names, nested again in run_config |

(*) 1/X of a log-uniform X is log-uniform over the same range.

Refused: `normal`, `q_normal`, `log_normal`, `q_log_normal` (Optuna samples bounded ranges
only), `beta`, `q_beta`, `q_log_uniform`, `q_log_uniform_values` (no quantized log
distribution), `categorical_w` / `probabilities` (Optuna's categorical has no weights).
Grid search takes `values`, `value`, `int_uniform` and `q_uniform` (a finite set).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from agent_lib.errors import SpecError

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
TOP_LEVEL_KEYS = (
    "program",
    "entity",
    "project",
    "description",
    "name",
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "command",
    "run_cap",
    "job",
    "image_uri",
    "scheduler",
)
PARAM_KEYS = (
    "value",
    "values",
    "probabilities",
    "distribution",
    "min",
    "max",
    "mu",
    "sigma",
    "q",
    "a",
    "b",
    "parameters",
    "description",
)
SCHEDULER_KEYS = ("num_workers", "poll_interval", "seed", "n_startup_trials")
HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")
MAPPED = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "log_uniform_values",
    "inv_log_uniform",
    "inv_log_uniform_values",
)
UNMAPPABLE = {
    "normal": "Optuna samples bounded ranges only; use uniform with min and max",
    "q_normal": "Optuna samples bounded ranges only; use q_uniform with min, max and q",
    "log_normal": "Optuna samples bounded ranges only; use log_uniform_values with min and max",
    "q_log_normal": "Optuna samples bounded ranges only; use log_uniform_values",
    "beta": "Optuna has no beta distribution; use uniform with min and max",
    "q_beta": "Optuna has no beta distribution; use q_uniform",
    "q_log_uniform": "Optuna has no quantized log distribution; use log_uniform or q_uniform",
    "q_log_uniform_values": "Optuna has no quantized log distribution; "
    "use log_uniform_values or q_uniform",
    "categorical_w": "Optuna's categorical distribution has no weights; use values",
}
GRID_OK = ("constant", "categorical", "int_uniform", "q_uniform")
ARG_MACROS = (
    "args",
    "args_no_equals",
    "args_no_hyphens",
    "args_no_boolean_flags",
    "args_json",
)
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
DEFAULT_NUM_WORKERS = 4
DEFAULT_POLL_INTERVAL = 0.5
MAX_GRID = 100_000


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) parameter; `name` is dotted for nested parameters."""

    name: str
    kind: str  # one of MAPPED
    values: tuple[Any, ...] = ()  # constant: (V,); categorical: the values
    low: float = 0.0
    high: float = 0.0
    q: float | None = None

    def optuna_distribution(self) -> Any:
        """This parameter as an Optuna distribution (None for a constant)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "constant":
            return None
        if self.kind == "categorical":
            return CategoricalDistribution(self.choices)
        if self.kind == "int_uniform":
            return IntDistribution(int(self.low), int(self.high))
        if self.kind == "uniform":
            return FloatDistribution(self.low, self.high)
        if self.kind == "q_uniform":
            return FloatDistribution(self.low, self.high, step=self.q)
        return FloatDistribution(self.low, self.high, log=True)

    @property
    def choices(self) -> tuple[Any, ...]:
        """Optuna's choices: the values themselves if they are plain scalars, else indices
        (a list or a mapping is a valid W&B value but not an Optuna choice)."""
        if all(v is None or isinstance(v, bool | int | float | str) for v in self.values):
            return self.values
        return tuple(range(len(self.values)))

    def value_of(self, suggested: Any) -> Any:
        """The run's value for what Optuna suggested."""
        if self.kind == "categorical" and self.choices != self.values:
            return self.values[int(suggested)]
        if self.kind == "q_uniform" and self.q is not None:
            return round(round(float(suggested) / self.q) * self.q, 12)
        return suggested

    def grid_axis(self) -> list[Any]:
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int_uniform":
            return list(range(int(self.low), int(self.high) + 1))
        assert self.kind == "q_uniform" and self.q is not None
        count = math.floor((self.high - self.low) / self.q + 1e-9) + 1
        return [round(self.low + i * self.q, 12) for i in range(count)]


@dataclass(frozen=True)
class Hyperband:
    min_iter: int
    max_iter: int | None
    eta: int


@dataclass(frozen=True)
class SweepConfig:
    raw: dict[str, Any]
    method: str
    metric_name: str | None
    goal: str
    target: float | None
    params: tuple[Param, ...]
    run_cap: int | None
    hyperband: Hyperband | None
    command: list[str] | None
    program: str | None
    job: str | None
    image_uri: str | None
    name: str | None
    project: str | None
    entity: str | None
    num_workers: int = DEFAULT_NUM_WORKERS
    poll_interval: float = DEFAULT_POLL_INTERVAL
    seed: int | None = None
    n_startup_trials: int | None = None
    constants: dict[str, Any] = field(default_factory=dict)

    @property
    def searched(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.kind != "constant")

    @property
    def grid_size(self) -> int:
        size = 1
        for param in self.searched:
            size *= len(param.grid_axis())
        return size

    def grid_space(self) -> dict[str, list[Any]]:
        return {p.name: p.grid_axis() for p in self.searched}

    def run_config(self, suggested: dict[str, Any]) -> dict[str, Any]:
        """The run's parameters, nested as the config nests them (for run_config)."""
        flat: dict[str, Any] = {}
        for param in self.params:
            if param.kind == "constant":
                flat[param.name] = param.values[0]
            elif param.name in suggested:
                flat[param.name] = param.value_of(suggested[param.name])
        return nest(flat)

    def better(self, a: float, b: float) -> bool:
        return a < b if self.goal == "minimize" else a > b


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        parts = name.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _refuse(path: str, rule: str) -> SpecError:
    return SpecError(f"sweep config: {path}: {rule}" if path else f"sweep config: {rule}")


def _unknown(path: str, key: str, known: tuple[str, ...]) -> SpecError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f"{path}.{key}" if path else str(key)
    return _refuse(where, f"unknown key{hint}; known keys: {', '.join(known)}")


def _number(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refuse(path, f"must be a finite number, got {value!r}")
    return float(value)


def _positive_int(path: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _refuse(path, f"must be a whole number of at least {minimum}, got {value!r}")
    return value


def parse_sweep_config(raw: Any) -> SweepConfig:
    """Check a W&B sweep config (a mapping, as read from YAML or JSON) and read it."""
    if not isinstance(raw, dict):
        raise _refuse("", f"must be a mapping of keys, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise _unknown("", str(key), TOP_LEVEL_KEYS)
    method = raw.get("method")
    if method is None:
        raise _refuse("method", "is required: grid, random or bayes")
    if method not in METHODS:
        raise _refuse("method", f"must be grid, random or bayes, got {method!r}")
    metric_name, goal, target = _metric(raw.get("metric"))
    if "parameters" not in raw:
        raise _refuse("parameters", "is required: the parameters to search")
    params = tuple(_parameters("parameters", raw["parameters"]))
    if not params:
        raise _refuse("parameters", "names no parameter")
    searched = [p for p in params if p.kind != "constant"]
    if method == "grid":
        for param in searched:
            if param.kind not in GRID_OK:
                raise _refuse(
                    f"parameters.{param.name}",
                    "method grid needs a finite set of values (values, value, int_uniform "
                    f"or q_uniform), got distribution {param.kind}",
                )
    if method == "bayes" and metric_name is None:
        raise _refuse("metric", "method bayes needs metric.name (the value to optimize)")
    if method != "grid" and not searched:
        raise _refuse("parameters", f"method {method} needs at least one parameter to search")
    run_cap = raw.get("run_cap")
    if run_cap is not None:
        run_cap = _positive_int("run_cap", run_cap)
    hyperband = _early_terminate(raw.get("early_terminate"))
    if hyperband is not None and metric_name is None:
        raise _refuse("early_terminate", "needs metric.name (the value runs report per step)")
    command = raw.get("command")
    if command is not None:
        if not isinstance(command, list) or not command:
            raise _refuse("command", "must be a non-empty list of words")
        for i, word in enumerate(command):
            if not isinstance(word, str | int | float) or isinstance(word, bool):
                raise _refuse(f"command[{i}]", f"must be a word, got {word!r}")
        command = [str(w) for w in command]
        macros = [w for w in command if w.startswith("${args")]
        for word in macros:
            if word[2:-1] not in ARG_MACROS and not word.startswith("${args_json_file"):
                raise _refuse(f"command[{command.index(word)}]", f"unknown macro {word}")
            if word.startswith("${args_json_file"):
                raise _refuse(
                    f"command[{command.index(word)}]",
                    "${args_json_file} is not supported: use ${args_json}",
                )
        if len(macros) > 1:
            raise _refuse("command", "may hold one ${args...} macro (W&B's rule)")
    for key in ("program", "job", "image_uri", "name", "project", "entity"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise _refuse(key, f"must be a non-empty string, got {value!r}")
    if raw.get("job") and raw.get("image_uri"):
        raise _refuse("job", "give job or image_uri, not both (W&B's rule)")
    scheduler = raw.get("scheduler") or {}
    if not isinstance(scheduler, dict):
        raise _refuse("scheduler", "must be a mapping")
    for key in scheduler:
        if key not in SCHEDULER_KEYS:
            raise _unknown("scheduler", str(key), SCHEDULER_KEYS)
    num_workers = _positive_int(
        "scheduler.num_workers", scheduler.get("num_workers", DEFAULT_NUM_WORKERS)
    )
    poll = _number("scheduler.poll_interval", scheduler.get("poll_interval", DEFAULT_POLL_INTERVAL))
    if not 0.01 <= poll <= 60:
        raise _refuse("scheduler.poll_interval", f"must be 0.01 to 60 seconds, got {poll:g}")
    seed = scheduler.get("seed")
    if seed is not None:
        seed = _positive_int("scheduler.seed", seed, 0)
    startup = scheduler.get("n_startup_trials")
    if startup is not None:
        startup = _positive_int("scheduler.n_startup_trials", startup, 0)
    config = SweepConfig(
        raw=raw,
        method=method,
        metric_name=metric_name,
        goal=goal,
        target=target,
        params=params,
        run_cap=run_cap,
        hyperband=hyperband,
        command=command,
        program=raw.get("program"),
        job=raw.get("job"),
        image_uri=raw.get("image_uri"),
        name=raw.get("name"),
        project=raw.get("project"),
        entity=raw.get("entity"),
        num_workers=num_workers,
        poll_interval=poll,
        seed=seed,
        n_startup_trials=startup,
    )
    if method == "grid" and config.grid_size > MAX_GRID:
        raise _refuse("parameters", f"the grid has {config.grid_size} points (at most {MAX_GRID})")
    return config


def _metric(metric: Any) -> tuple[str | None, str, float | None]:
    if metric is None:
        return None, "minimize", None
    if not isinstance(metric, dict):
        raise _refuse("metric", "must be a mapping with name and goal")
    for key in metric:
        if key not in ("name", "goal", "target"):
            raise _unknown("metric", str(key), ("name", "goal", "target"))
    name = metric.get("name")
    if not isinstance(name, str) or not name:
        raise _refuse("metric.name", f"must be the name of a logged value, got {name!r}")
    goal = metric.get("goal", "minimize")
    if goal not in GOALS:
        raise _refuse("metric.goal", f"must be minimize or maximize, got {goal!r}")
    target = metric.get("target")
    return name, goal, None if target is None else _number("metric.target", target)


def _early_terminate(spec: Any) -> Hyperband | None:
    """W&B's hyperband (`min_iter`, or `max_iter` with `s`; `eta`) as Optuna's
    HyperbandPruner(min_resource, max_resource, reduction_factor)."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise _refuse("early_terminate", "must be a mapping with type: hyperband")
    for key in spec:
        if key not in HYPERBAND_KEYS:
            raise _unknown("early_terminate", str(key), HYPERBAND_KEYS)
    if spec.get("type") != "hyperband":
        raise _refuse("early_terminate.type", f"must be hyperband, got {spec.get('type')!r}")
    if spec.get("strict"):
        raise _refuse(
            "early_terminate.strict",
            "cannot be mapped onto Optuna's HyperbandPruner (it has no strict mode)",
        )
    eta = _positive_int("early_terminate.eta", spec.get("eta", 3), 2)
    max_iter = spec.get("max_iter")
    if max_iter is not None:
        max_iter = _positive_int("early_terminate.max_iter", max_iter)
    if "min_iter" in spec:
        min_iter = _positive_int("early_terminate.min_iter", spec["min_iter"])
    elif max_iter is not None:
        s = _positive_int("early_terminate.s", spec.get("s", 1), 0)
        min_iter = max(1, max_iter // eta**s)
    else:
        raise _refuse("early_terminate.min_iter", "is required (or max_iter with s)")
    if max_iter is not None and max_iter < min_iter:
        raise _refuse("early_terminate.max_iter", f"must be at least min_iter ({min_iter})")
    return Hyperband(min_iter, max_iter, eta)


def _parameters(path: str, spec: Any, prefix: str = "") -> list[Param]:
    if not isinstance(spec, dict):
        raise _refuse(path, "must be a mapping of parameter names to their specs")
    found: list[Param] = []
    for name, body in spec.items():
        if not isinstance(name, str) or not name or "." in name:
            raise _refuse(f"{path}.{name}", "a parameter name must be a non-empty word without '.'")
        where = f"{path}.{name}"
        if not isinstance(body, dict):
            raise _refuse(where, "must be a mapping (value, values, or distribution/min/max)")
        for key in body:
            if key not in PARAM_KEYS:
                raise _unknown(where, str(key), PARAM_KEYS)
        if "parameters" in body:
            others = [k for k in body if k not in ("parameters", "description")]
            if others:
                raise _refuse(where, f"nested parameters cannot also set {', '.join(others)}")
            found.extend(_parameters(f"{where}.parameters", body["parameters"], f"{prefix}{name}."))
            continue
        found.append(_parameter(where, f"{prefix}{name}", body))
    return found


def _infer(where: str, body: dict[str, Any]) -> str:
    """W&B's rule for a spec without `distribution`."""
    if "value" in body:
        return "constant"
    if "probabilities" in body:
        return "categorical_w"
    if "values" in body:
        return "categorical"
    if "min" in body and "max" in body:
        lo, hi = body["min"], body["max"]
        both_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi))
        if "q" in body:
            return "q_uniform"
        return "int_uniform" if both_int else "uniform"
    if "mu" in body or "sigma" in body:
        return "normal"
    raise _refuse(where, "give value, values, or min and max (or a distribution)")


def _parameter(where: str, name: str, body: dict[str, Any]) -> Param:
    kind = body.get("distribution") or _infer(where, body)
    if not isinstance(kind, str):
        raise _refuse(f"{where}.distribution", f"must be a name, got {kind!r}")
    if kind in UNMAPPABLE:
        key = "probabilities" if kind == "categorical_w" and "probabilities" in body else None
        at = f"{where}.{key}" if key else f"{where}.distribution"
        raise _refuse(
            at, f"{kind} cannot be mapped onto an Optuna distribution: {UNMAPPABLE[kind]}"
        )
    if kind not in MAPPED:
        known = ", ".join([*MAPPED, *UNMAPPABLE])
        raise _refuse(f"{where}.distribution", f"unknown distribution {kind!r} ({known})")
    if kind == "constant":
        if "value" not in body:
            raise _refuse(f"{where}.value", "is required for distribution constant")
        return Param(name, kind, (body["value"],))
    if kind == "categorical":
        values = body.get("values")
        if not isinstance(values, list) or not values:
            raise _refuse(f"{where}.values", "must be a non-empty list")
        return Param(name, kind, tuple(values))
    for key in ("min", "max"):
        if key not in body:
            raise _refuse(f"{where}.{key}", f"is required for distribution {kind}")
    low = _number(f"{where}.min", body["min"])
    high = _number(f"{where}.max", body["max"])
    if not low < high:
        raise _refuse(f"{where}.max", f"must be greater than min ({high:g} <= {low:g})")
    q = None
    if kind == "int_uniform":
        for key in ("min", "max"):
            if not float(body[key]).is_integer():
                raise _refuse(f"{where}.{key}", f"must be a whole number for {kind}")
    if kind == "q_uniform":
        q = _number(f"{where}.q", body.get("q", 1.0))
        if q <= 0 or q > high - low:
            raise _refuse(f"{where}.q", f"must be above 0 and at most max - min, got {q:g}")
    elif "q" in body:
        raise _refuse(f"{where}.q", f"is not used by distribution {kind} (use q_uniform)")
    if kind in ("log_uniform_values", "inv_log_uniform_values") and low <= 0:
        raise _refuse(f"{where}.min", f"must be above 0 for {kind}, got {low:g}")
    if kind == "log_uniform":
        low, high = math.exp(low), math.exp(high)
    elif kind == "inv_log_uniform":
        low, high = math.exp(-high), math.exp(-low)
    return Param(name, kind, (), low, high, q)
