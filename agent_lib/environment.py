"""The environment a job sees: W&B's contract, so a job calling `wandb.init` just works."""

from __future__ import annotations

import json

from agent_lib.spec import LaunchSpec


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
