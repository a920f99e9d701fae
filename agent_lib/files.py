"""Per-job folders and the file saver that keeps failure files (W&B's RunQueueItemFileSaver)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from agent_lib.redact import redact

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# Folder names stay well under NAME_MAX (255 bytes), leaving room for the suffix a stale
# folder gets when it is moved aside (`.old-<unix time>`).
MAX_JOB_DIR_NAME = 200
_PART_CHARS = 80
_HASH_CHARS = 16


def job_dir_for(jobs_dir: Path, item_id: str, run_id: str) -> Path:
    """A folder per job attempt, named so a person finds it: `<item>-<run>`.

    Only `[A-Za-z0-9._-]` reach the name. A name that would be too long keeps the start of
    each part and ends with a hash of both ids, so it stays unique and the same every time.
    """
    name = f"{_UNSAFE.sub('_', item_id)}-{_UNSAFE.sub('_', run_id)}"
    if len(name) <= MAX_JOB_DIR_NAME:
        return jobs_dir / name
    both = f"{len(item_id)}:{item_id}{run_id}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(both).hexdigest()[:_HASH_CHARS]
    item = _UNSAFE.sub("_", item_id)[:_PART_CHARS]
    run = _UNSAFE.sub("_", run_id)[:_PART_CHARS]
    return jobs_dir / f"{item}-{run}-{digest}"


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
