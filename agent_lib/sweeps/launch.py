"""What the agent runs for a sweep scheduler item on our own (SQL) queues.

A scheduler item keeps W&B's shape (`uri: placeholder-uri-scheduler`, `wandb scheduler
WANDB_SWEEP_ID ...`), so it counts against `max_schedulers` by W&B's rule. W&B's scheduler
talks to W&B's server; on the SQL backend the agent runs ours instead, whatever the item's
command says: `python -m agent_lib.sweeps.scheduler --sweep ID --jobs-dir DIR`, with the
queue database's URL in `DATABASE_URL` (environment only, never a command line; its
password is masked in every log). Only the sweep id comes from the item, so an item cannot
choose what runs with the database's credentials. Kept light: the agent imports it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from agent_lib.redact import register_secret
from agent_lib.spec import LaunchSpec

SCHEDULER_MODULE = "agent_lib.sweeps.scheduler"


def own_scheduler(
    api: Any, spec: LaunchSpec, jobs_dir: Path
) -> tuple[list[str], dict[str, str]] | None:
    """(command, environment) of our scheduler for this item, or None when the item is not
    a scheduler of a sweep on a SQL backend (then it runs as it says, as on W&B)."""
    from agent_lib.backends.sql import SqlBackend

    if not isinstance(api, SqlBackend) or not spec.is_scheduler:
        return None
    sweep_id = spec.sweep_id
    entry = spec.overrides.entry_point or []
    if not sweep_id and entry[:2] == ["wandb", "scheduler"] and len(entry) > 2:
        sweep_id = entry[2]  # a resumed scheduler item has no sweep_id (resume_spec)
    if not sweep_id or sweep_id == "WANDB_SWEEP_ID":
        return None
    register_secret(make_url(api.url).password)
    command = [
        sys.executable,
        "-m",
        SCHEDULER_MODULE,
        "--sweep",
        sweep_id,
        "--jobs-dir",
        str(Path(jobs_dir).resolve()),
    ]
    return command, {"DATABASE_URL": api.url}
