"""The noop builder: the job names its image (or needs none); nothing is built."""

from __future__ import annotations

from pathlib import Path

from agent_lib.spec import LaunchSpec


class NoopBuilder:
    type = "noop"

    async def build_image(self, spec: LaunchSpec, job_dir: Path) -> str | None:
        return spec.image
