"""The builder seam: turn a job's source into an image (W&B's AbstractBuilder)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from agent_lib.spec import LaunchSpec


class Builder(Protocol):
    """Builds (or finds) the image a job runs in. Failures raise BuildError (phase build)."""

    type: str

    async def build_image(self, spec: LaunchSpec, job_dir: Path) -> str | None:
        """Return the image to run, or None when the job runs without one."""
        ...
