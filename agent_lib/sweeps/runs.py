"""What a sweep's run item looks like: W&B's command macros and the run's launch spec.

At `sweep create` the command is settled once: `-- COMMAND...` (with `${args}` appended
unless it holds an args macro), else the config's `command`, else W&B's default
`${env} ${interpreter} ${program} ${args}`; or, for a named job (`--job` or the config's
`job`), only the args macro. `${env}` becomes `/usr/bin/env`, `${interpreter}` `python`,
`${program}` the config's `program` (its full path if it is a file where `sweep create` runs:
runs run in their own job folder) and `${envvar:NAME}` the creator's NAME. The args
macro stays, and is filled per run (W&B's formats):

- `${args}`: `--name=value` per parameter (nested: `--outer.inner=value`)
- `${args_no_equals}`: `--name value`
- `${args_no_hyphens}`: `name=value`
- `${args_no_boolean_flags}`: `--name=value`, a true boolean as `--name`, a false one left out
- `${args_json}`: one word, the parameters as JSON

Every run also gets its parameters as `overrides.run_config` (WANDB_CONFIG), so
`wandb.config` sees them as under a W&B sweep.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from agent_lib.errors import SpecError
from agent_lib.spec import LOCAL_PROCESS, SCHEDULER_PLACEHOLDER_URI
from agent_lib.sweeps.config import ARG_MACROS, DEFAULT_COMMAND, SweepConfig, flatten

ENVVAR = re.compile(r"\$\{envvar:([^}]*)\}")


def _word(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def expand_args(macro: str, run_config: dict[str, Any]) -> list[str]:
    """The words an args macro stands for, for one run's parameters."""
    flat = flatten(run_config)
    kind = macro[2:-1]
    if kind == "args_json":
        return [json.dumps(run_config)]
    words: list[str] = []
    for name, value in flat.items():
        if kind == "args":
            words.append(f"--{name}={_word(value)}")
        elif kind == "args_no_equals":
            words.extend([f"--{name}", _word(value)])
        elif kind == "args_no_hyphens":
            words.append(f"{name}={_word(value)}")
        elif kind == "args_no_boolean_flags":
            if isinstance(value, bool):
                if value:
                    words.append(f"--{name}")
            else:
                words.append(f"--{name}={_word(value)}")
    return words


def _static(word: str, config: SweepConfig) -> str:
    if word == "${env}":
        return "/usr/bin/env"
    if word == "${interpreter}":
        return "python"
    if word == "${program}":
        if not config.program:
            raise SpecError("sweep config: command: ${program} needs the config's program key")
        # Runs run in their own job folder: a program found here is given by its full path.
        found = Path(config.program)
        return str(found.resolve()) if found.is_file() else config.program
    return ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), word)


def run_template(
    config: SweepConfig,
    job: str | None = None,
    command: list[str] | None = None,
    resource: str | None = None,
    image: str | None = None,
) -> dict[str, Any]:
    """What every run of the sweep shares: the spec and where its args macro goes."""
    spec: dict[str, Any] = {}
    job = job or config.job
    image = image or config.image_uri
    if config.project:
        spec["project"] = config.project
    if config.entity:
        spec["entity"] = config.entity
    if resource:
        spec["resource"] = resource
    if image:
        spec["docker"] = {"docker_image": image}
    words: list[str] | None
    if command:
        words = list(command)
        if not any(w[2:-1] in ARG_MACROS for w in words if w.startswith("${")):
            words.append("${args}")
    elif job or image:
        words = None  # the job's (or image's) own entry point; the args go to overrides.args
    elif config.command:
        words = list(config.command)
    elif config.program:
        words = list(DEFAULT_COMMAND)
    else:
        raise SpecError(
            "sweep create: say what each run runs: -- COMMAND..., --job NAME, or the config's "
            "program, command or job"
        )
    if job:
        spec["job"] = job
    found = [w for w in (words or config.command or []) if w[2:-1] in ARG_MACROS]
    macro = found[0] if found else "${args}"
    if words is not None:
        words = [w if w == macro else _static(w, config) for w in words]
    return {"spec": spec, "words": words, "macro": macro}


def run_spec(
    template: dict[str, Any],
    sweep_id: str,
    run_name: str,
    run_id: str,
    run_config: dict[str, Any],
) -> dict[str, Any]:
    """One run's launch spec (W&B's runSpec shape)."""
    spec: dict[str, Any] = json.loads(json.dumps(template["spec"]))
    macro = template["macro"]
    args = expand_args(macro, run_config)
    overrides: dict[str, Any] = {"run_config": run_config}
    words = template.get("words")
    if words:
        entry: list[str] = []
        for word in words:
            entry.extend(args if word == macro else [word])
        overrides["entry_point"] = entry
    else:
        overrides["args"] = args
    spec.update(sweep_id=sweep_id, run_id=run_id, name=run_name, overrides=overrides)
    return spec


def scheduler_spec(sweep_id: str, queue: str, config: SweepConfig) -> dict[str, Any]:
    """The scheduler item, shaped as W&B's (`uri: placeholder-uri-scheduler`, the command
    `wandb scheduler SWEEP_ID ...`). On our own queues the agent runs
    `agent_lib.sweeps.scheduler` for it instead (see `agent_lib.sweeps.launch`). The sweep
    id is in the command too: a preempted item's resume drops `sweep_id`."""
    spec: dict[str, Any] = {
        "uri": SCHEDULER_PLACEHOLDER_URI,
        "resource": LOCAL_PROCESS,
        "sweep_id": sweep_id,
        "name": f"sweep {sweep_id} scheduler",
        "overrides": {
            "entry_point": ["wandb", "scheduler", sweep_id, "--queue", queue],
        },
    }
    if config.project:
        spec["project"] = config.project
    if config.entity:
        spec["entity"] = config.entity
    return spec
