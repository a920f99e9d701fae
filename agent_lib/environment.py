"""The environment a job sees: W&B's contract, so a job calling `wandb.init` just works,
and, for local processes, only what of the agent's own environment is safe to share.

A job never inherits the agent's credentials by accident: the queue database's URL (with
its password), the agent's own W&B key, `LAUNCH_AGENT_*` settings. What it gets from the
agent is an allow-list (PATH, HOME, LANG, ...) plus what `inherit_env` names.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from agent_lib.spec import LaunchSpec

SAFE_VARIABLES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"}
)
SAFE_PREFIXES = ("LC_",)
# Never passed on by `inherit_env: true` (a list that names one explicitly still passes it).
AGENT_ONLY_VARIABLES = frozenset(
    {"DATABASE_URL", "WANDB_API_KEY", "PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE", "NETRC"}
)
AGENT_ONLY_PREFIXES = ("LAUNCH_AGENT_",)
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)


def inherited_environment(
    inherit: bool | list[str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What a local-process job takes from the agent's environment (see module doc)."""
    source = os.environ if environ is None else environ
    if inherit is True:
        return {k: v for k, v in source.items() if not _agent_only(k)}
    named = set(inherit or [])
    return {
        k: v
        for k, v in source.items()
        if k in SAFE_VARIABLES or k.startswith(SAFE_PREFIXES) or k in named
    }


def _agent_only(name: str) -> bool:
    return (
        name in AGENT_ONLY_VARIABLES
        or name.startswith(AGENT_ONLY_PREFIXES)
        or bool(_SECRET_NAME.search(name))
    )


def job_environment(
    spec: LaunchSpec, item_id: str, queue: str, run_id: str, entity: str | None
) -> dict[str, str]:
    """The WANDB_* variables for one job. Credentials are added by the backend, separately."""
    env = {
        "WANDB_RUN_ID": run_id,
        "WANDB_LAUNCH": "True",
        "WANDB_CONFIG": json.dumps(spec.overrides.run_config),
        "WANDB_LAUNCH_QUEUE_NAME": queue,
        "WANDB_LAUNCH_TRACE_ID": item_id,
    }
    optional = {
        "WANDB_PROJECT": spec.project,
        "WANDB_ENTITY": spec.entity or entity,
        "WANDB_NAME": spec.name,
        "WANDB_SWEEP_ID": spec.sweep_id,
        "WANDB_LAUNCH_QUEUE_ENTITY": entity,
    }
    env.update({k: v for k, v in optional.items() if v})
    if spec.resume_count > 0:
        env["WANDB_RESUME"] = "allow"
    return env
