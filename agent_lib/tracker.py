"""What the agent knows about one job while it runs (W&B's JobAndRunStatusTracker)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from agent_lib.files import ItemFileSaver
from agent_lib.runners.base import Status, SubmittedRun
from agent_lib.spec import LaunchSpec
from agent_lib.states import Phase


@dataclass
class JobTracker:
    run_queue_item_id: str
    queue: str
    saver: ItemFileSaver
    spec: LaunchSpec | None = None
    run_id: str | None = None
    entity: str | None = None
    project: str | None = None
    resource: str | None = None
    description: str = ""
    is_scheduler: bool = False
    run: SubmittedRun | None = None
    err_stage: Phase = Phase.AGENT
    completed_status: Status | None = None
    failure_reported: bool = False
    requeue_on_stop: bool = False
    started_at: float = field(default_factory=time.monotonic)

    @property
    def job_dir(self) -> Path:
        return self.saver.job_dir

    @property
    def log_path(self) -> Path:
        return self.job_dir / "output.log"

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started_at
