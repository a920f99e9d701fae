"""`launch-agent sweep ...`: the commands' bodies (their arguments: sweep_parser.py).

    launch-agent sweep create CONFIG.yaml -q QUEUE [--job NAME | -- COMMAND...]
    launch-agent sweep list
    launch-agent sweep show ID [--json]
    launch-agent sweep pause | resume | stop | cancel ID

Exit codes as the rest of the CLI: 2 for a config that cannot be used (the message names
the key), 3 for no such sweep.
"""

from __future__ import annotations

import argparse
import random
import secrets
import string
from pathlib import Path
from typing import Any

from agent_lib.backends.sql_sweeps import SweepError, SweepRecord, SweepRunRecord
from agent_lib.cli import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    ago,
    emit,
    load_config,
    open_queue_db,
    parse_priority,
    requester,
    table,
)
from agent_lib.config import queue_name_problem
from agent_lib.errors import SpecError
from agent_lib.runners import available_resources
from agent_lib.spec import LaunchSpec
from agent_lib.states import TERMINAL_ITEM_STATES
from agent_lib.sweeps.config import SweepConfig, flatten, parse_sweep_config
from agent_lib.sweeps.runs import run_spec, run_template, scheduler_spec
from agent_lib.yaml_text import load_yaml

SWEEP_ID_ALPHABET = string.ascii_lowercase + string.digits
MAX_CONFIG_BYTES = 256 * 1024


def new_sweep_id() -> str:
    return "".join(secrets.choice(SWEEP_ID_ALPHABET) for _ in range(8))


def read_config(path: str) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(
            f"{path}: cannot read the sweep config ({exc.strerror})", EXIT_USAGE
        ) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise CliError(f"{path}: the sweep config is larger than 256 KiB", EXIT_USAGE)
    try:
        return load_yaml(data.decode("utf-8"))
    except ValueError as exc:  # not UTF-8 (a UnicodeDecodeError), or not YAML
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"{path}: not valid YAML or JSON: {first}", EXIT_USAGE) from exc


def sample_params(config: SweepConfig) -> dict[str, Any]:
    """One point of the search space (what a first run would get), to check the run spec."""
    sample: dict[str, Any] = {}
    for param in config.searched:
        if param.kind in ("categorical", "int_uniform", "q_uniform"):
            sample[param.name] = param.grid_axis()[0]
        else:
            sample[param.name] = param.low
    return config.run_config(sample)


def create_options(args: argparse.Namespace) -> list[str]:
    """Options given after CONFIG land in the command's remainder (argparse's rule for a
    positional followed by REMAINDER): parse them now; the command is what follows `--`."""
    rest = list(args.command)
    if "--" in rest:
        cut = rest.index("--")
        given, command = rest[:cut], rest[cut + 1 :]
    else:
        given, command = rest, []
    if given:
        parser: argparse.ArgumentParser = args.options_parser
        try:
            parser.parse_args(given, namespace=args)
        except SystemExit as exc:  # argparse printed the usage error
            raise CliError("bad options for sweep create (see above)", EXIT_USAGE) from exc
    return command


def cmd_sweep_create(args: argparse.Namespace) -> int:
    raw = read_config(args.config_file)
    try:
        config = parse_sweep_config(raw)
    except SpecError as exc:
        raise CliError(f"{args.config_file}: {exc}", EXIT_USAGE) from exc
    problem = queue_name_problem(args.queue)
    if problem:
        raise CliError(f"--queue: {problem}", EXIT_USAGE)
    if args.resource is not None and args.resource not in available_resources():
        raise CliError(
            f"--resource {args.resource!r} is not supported (supported: "
            f"{', '.join(available_resources())})",
            EXIT_USAGE,
        )
    command = create_options(args)
    if command and args.job:
        raise CliError("give --job or a command after '--', not both", EXIT_USAGE)
    priority = parse_priority(args.priority)
    sweep_id = new_sweep_id()
    try:
        template = run_template(config, args.job, command or None, args.resource, args.image)
        LaunchSpec.parse(
            run_spec(template, sweep_id, f"{sweep_id}-0", "sample0", sample_params(config))
        )
    except SpecError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    seed = args.seed if args.seed is not None else config.seed
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    settings = {"queue": args.queue, "priority": priority, "template": template, "seed": seed}
    db = open_queue_db(load_config(args))
    try:
        item_id = db.create_sweep(
            sweep_id,
            config.name,
            raw,
            settings,
            args.queue,
            scheduler_spec(sweep_id, args.queue, config),
            priority,
        )
    finally:
        db.close()
    size = f", {config.grid_size} grid points" if config.method == "grid" else ""
    cap = f", run_cap {config.run_cap}" if config.run_cap else ""
    emit(
        args,
        {"id": sweep_id, "queue": args.queue, "scheduler_item": item_id},
        f"created sweep {sweep_id} ({config.method}{size}{cap}) on queue {args.queue!r}; "
        f"scheduler item {item_id}\nfollow it with: launch-agent sweep show {sweep_id}",
    )
    return EXIT_OK


def _config_of(sweep: SweepRecord) -> SweepConfig | None:
    try:
        return parse_sweep_config(sweep.config)
    except SpecError:
        return None


def _best(config: SweepConfig | None, runs: list[SweepRunRecord]) -> SweepRunRecord | None:
    if config is None:
        return None
    from agent_lib.sweeps.scheduler import best_run

    return best_run(config, runs)


def _run_params(config: SweepConfig | None, run: SweepRunRecord) -> dict[str, Any]:
    return config.run_config(run.params) if config is not None else dict(run.params)


def _run_dict(config: SweepConfig | None, run: SweepRunRecord) -> dict[str, Any]:
    return {
        "number": run.number,
        "item": run.item_id,
        "run_id": run.run_id,
        "state": run.state,
        "item_state": run.item_state,
        "params": _run_params(config, run),
        "value": run.value,
        "steps": len(run.intermediate),
        "message": run.message,
    }


def cmd_sweep_list(args: argparse.Namespace) -> int:
    db = open_queue_db(load_config(args))
    try:
        found = [(s, db.sweep_runs(s.id)) for s in db.list_sweeps() if s.config]
    finally:
        db.close()
    rows, data = [], []
    for sweep, runs in found:
        config = _config_of(sweep)
        best = _best(config, runs)
        method = config.method if config else "?"
        best_text = (
            f"{best.value:g} (run {best.number})" if best and best.value is not None else "-"
        )
        rows.append(
            [sweep.id, sweep.name or "-", sweep.state, method, sweep.queue or "-",
             str(len(runs)), best_text, ago(sweep.created_at)]
        )  # fmt: skip
        data.append(
            {
                "id": sweep.id,
                "name": sweep.name,
                "state": sweep.state,
                "method": method,
                "queue": sweep.queue,
                "runs": len(runs),
                "best_value": best.value if best else None,
            }
        )
    headers = ["ID", "NAME", "STATE", "METHOD", "QUEUE", "RUNS", "BEST", "CREATED"]
    emit(args, data, table(headers, rows) if rows else "no sweeps")
    return EXIT_OK


def cmd_sweep_show(args: argparse.Namespace) -> int:
    db = open_queue_db(load_config(args))
    try:
        sweep = db.get_sweep(args.sweep_id)
        if sweep is None or not sweep.config:
            raise CliError(f"no sweep {args.sweep_id!r}", EXIT_NOT_FOUND)
        runs = db.sweep_runs(sweep.id)
    finally:
        db.close()
    config = _config_of(sweep)
    best = _best(config, runs)
    metric = config.metric_name if config else None
    goal = config.goal if config else None
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.state] = counts.get(run.state, 0) + 1
    data = {
        "id": sweep.id,
        "name": sweep.name,
        "state": sweep.state,
        "message": sweep.message,
        "method": config.method if config else None,
        "metric": {"name": metric, "goal": goal},
        "queue": sweep.queue,
        "scheduler_item": sweep.scheduler_item_id,
        "created_at": sweep.created_at,
        "config": sweep.config,
        "runs": [_run_dict(config, r) for r in runs],
        "counts": counts,
        "best": _run_dict(config, best) if best else None,
    }
    if args.json:
        emit(args, data, "")
        return EXIT_OK
    lines = [
        f"sweep {sweep.id}{f' ({sweep.name})' if sweep.name else ''}: {sweep.state}"
        + (f" ({sweep.message})" if sweep.message else ""),
        f"  method:    {data['method']}   metric: {metric or '-'} ({goal})",
        f"  queue:     {sweep.queue}   scheduler item: {sweep.scheduler_item_id or '-'}",
        f"  created:   {ago(sweep.created_at)}",
        "  runs:      "
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "none yet"),
    ]
    if best is not None:
        lines.append(
            f"  best:      run {best.number} (item {best.item_id}, run {best.run_id}): "
            f"{metric}={best.value:g} with {_flat_text(_run_params(config, best))}"
        )
    if runs:
        rows = [
            [str(r.number), r.item_id, r.run_id, r.state,
             f"{r.value:g}" if r.value is not None else "-",
             _flat_text(_run_params(config, r))[:60], (r.message or "")[:50]]
            for r in runs
        ]  # fmt: skip
        lines.append("")
        lines.append(table(["#", "ITEM", "RUN", "STATE", "VALUE", "PARAMS", "NOTE"], rows))
    print("\n".join(lines))
    return EXIT_OK


def _flat_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in flatten(params).items())


def cmd_sweep_change(args: argparse.Namespace) -> int:
    action = args.action
    db = open_queue_db(load_config(args))
    try:
        try:
            old, new, stopped = db.change_sweep_state(args.sweep_id, action, requester())
        except SweepError as exc:
            raise CliError(str(exc), EXIT_NOT_FOUND if exc.not_found else EXIT_FAILED) from exc
        requeued = None
        if action == "resume":
            requeued = _requeue_scheduler(db, args.sweep_id)
    finally:
        db.close()
    text = f"sweep {args.sweep_id}: {old} -> {new}"
    if stopped:
        text += f"; {stopped} of its runs stopped"
    if requeued:
        text += f"; its scheduler had ended: queued it again as item {requeued}"
    emit(
        args,
        {"id": args.sweep_id, "from": old, "state": new, "stopped": stopped, "scheduler": requeued},
        text,
    )
    return EXIT_OK


def _requeue_scheduler(db: Any, sweep_id: str) -> str | None:
    """On resume: a sweep whose scheduler item ended (stopped, failed) gets a new one."""
    sweep = db.get_sweep(sweep_id)
    if sweep is None or sweep.queue is None:
        return None
    current = db.get_item(sweep.scheduler_item_id) if sweep.scheduler_item_id else None
    if current is not None and current.state not in TERMINAL_ITEM_STATES:
        return None
    config = _config_of(sweep)
    if config is None:
        return None
    spec = scheduler_spec(sweep_id, sweep.queue, config)
    item_id: str = db.push_to_run_queue(sweep.queue, spec)
    return item_id


__all__ = ["EXIT_FAILED"]
