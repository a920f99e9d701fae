"""Per-job folders and the file saver that keeps failure files (W&B's RunQueueItemFileSaver)."""

from __future__ import annotations

import re
from pathlib import Path

from agent_lib.redact import redact

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def job_dir_for(jobs_dir: Path, item_id: str, run_id: str) -> Path:
    """A folder per job attempt, named so a person finds it: `<item>-<run>`."""
    return jobs_dir / f"{_UNSAFE.sub('_', item_id)}-{_UNSAFE.sub('_', run_id)}"


class ItemFileSaver:
    """Saves files about one item (error logs) under its job folder; returns their paths."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir

    def save_contents(self, contents: str, fname: str, file_sub_type: str) -> list[str]:
        folder = self.job_dir / file_sub_type
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / fname
        path.write_text(redact(contents))
        return [str(path)]
