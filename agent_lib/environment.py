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
from typing import Any

from agent_lib.spec import LaunchSpec

# W&B's slot for the job a run was launched from (wandb.util.LAUNCH_JOB_ARTIFACT_SLOT_NAME).
JOB_ARTIFACT_SLOT = "_wandb_job"

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


# W&B's limit for one variable's value (wandb/sdk/launch/utils.py MAX_ENV_LENGTHS: the
# same for local processes, containers and Kubernetes); longer JSON is split in parts.
MAX_ENV_LENGTH = 32670


def job_environment(
    spec: LaunchSpec,
    item_id: str,
    queue: str,
    run_id: str,
    entity: str | None,
    *,
    job_artifact: str | None = None,
    image: str | None = None,
    max_env_length: int = MAX_ENV_LENGTH,
) -> dict[str, str]:
    """The WANDB_* variables for one job, with W&B's names and formats
    (`LaunchProject.get_env_vars_dict`). Credentials are added by the backend, separately.

    - WANDB_CONFIG: JSON of `overrides.run_config`; longer than `max_env_length`, it is
      split into WANDB_CONFIG_0..n, which `wandb.init` joins again.
    - WANDB_LAUNCH_FILE_OVERRIDES: JSON of `overrides.files` (split the same way).
    - WANDB_ARTIFACTS: JSON of `overrides.artifacts`, plus `_wandb_job` for a W&B job
      artifact (`job_artifact`), so `use_artifact` swaps in the overrides.
    - WANDB_USERNAME: the item's `author`, unless the item brings its own API key.
    - WANDB_DOCKER: the image the job runs (an image job's or `docker.docker_image`).
    """
    overrides = spec.overrides.model_extra or {}
    env = {
        "WANDB_RUN_ID": run_id,
        "WANDB_LAUNCH": "True",
        "WANDB_LAUNCH_QUEUE_NAME": queue,
        "WANDB_LAUNCH_TRACE_ID": item_id,
    }
    optional = {
        "WANDB_PROJECT": spec.project,
        "WANDB_ENTITY": spec.entity or entity,
        "WANDB_NAME": spec.name,
        "WANDB_SWEEP_ID": spec.sweep_id,
        "WANDB_LAUNCH_QUEUE_ENTITY": entity,
        "WANDB_DOCKER": image or spec.image,
        "WANDB_USERNAME": None if spec.wandb_api_key else spec.author,
    }
    env.update({k: v for k, v in optional.items() if v})
    if spec.resume_count > 0:
        env["WANDB_RESUME"] = "allow"
    env.update(split_json("WANDB_CONFIG", spec.overrides.run_config, max_env_length))
    files = overrides.get("files")
    env.update(
        split_json(
            "WANDB_LAUNCH_FILE_OVERRIDES", files if isinstance(files, dict) else {}, max_env_length
        )
    )
    artifacts = overrides.get("artifacts")
    slots: dict[str, Any] = {JOB_ARTIFACT_SLOT: job_artifact} if job_artifact else {}
    slots.update(artifacts if isinstance(artifacts, dict) else {})
    env["WANDB_ARTIFACTS"] = json.dumps(slots)
    return env


def split_json(name: str, value: Any, max_length: int = MAX_ENV_LENGTH) -> dict[str, str]:
    """`{NAME: json}`, or `{NAME_0: part, NAME_1: part, ...}` when the JSON is longer than
    `max_length` characters (W&B's `_inject_wandb_config_env_vars`)."""
    text = json.dumps(value)
    if len(text) <= max_length:
        return {name: text}
    return {
        f"{name}_{i}": text[start : start + max_length]
        for i, start in enumerate(range(0, len(text), max_length))
    }
