"""Pydantic models of W&B's launch spec (`runSpec`) and of a popped queue item.

Unknown keys are kept, not dropped: a spec that goes back to a queue (a resumed run)
must carry everything it came with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent_lib.errors import SpecError

LOCAL_PROCESS = "local-process"
LOCAL_CONTAINER = "local-container"
SCHEDULER_PLACEHOLDER_URI = "placeholder-uri-scheduler"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Overrides(_Open):
    """What a queue item changes about its job."""

    args: list[str] = Field(default_factory=list)
    run_config: dict[str, Any] = Field(default_factory=dict)
    entry_point: list[str] | None = None

    @field_validator("args", mode="before")
    @classmethod
    def _args_from_mapping(cls, value: Any) -> Any:
        """W&B also accepts args as a mapping {flag: value}; flatten it to argv form."""
        if isinstance(value, dict):
            flat: list[str] = []
            for key, val in value.items():
                flat.extend([f"--{key}", str(val)] if val is not None else [f"--{key}"])
            return flat
        return value


class DockerSpec(_Open):
    docker_image: str | None = None


class GitSpec(_Open):
    url: str | None = None
    version: str | None = None


class LaunchSpec(_Open):
    """W&B's runSpec. Every field is optional; what a job needs is checked when it runs."""

    job: str | None = None
    uri: str | None = None
    git: GitSpec | None = None
    docker: DockerSpec = Field(default_factory=DockerSpec)
    image_uri: str | None = None
    entity: str | None = None
    project: str | None = None
    resource: str | None = None
    resource_args: dict[str, dict[str, Any]] = Field(default_factory=dict)
    overrides: Overrides = Field(default_factory=Overrides)
    sweep_id: str | None = None
    run_id: str | None = None
    name: str | None = None
    author: str | None = None
    builder: dict[str, Any] | None = None
    resume_count: int = Field(default=0, alias="_resume_count", ge=0)
    wandb_api_key: str | None = Field(default=None, alias="_wandb_api_key", repr=False)

    @classmethod
    def parse(cls, raw: Any) -> LaunchSpec:
        """Validate a raw runSpec; a bad one raises SpecError naming the field."""
        if isinstance(raw, str):
            raise SpecError("launch spec must be a JSON object, got a string")
        if not isinstance(raw, dict):
            raise SpecError(f"launch spec must be a JSON object, got {type(raw).__name__}")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise SpecError(f"invalid launch spec: {describe_validation_error(exc)}") from exc

    @property
    def image(self) -> str | None:
        """The image to run, from `docker.docker_image` or `image_uri`."""
        return self.docker.docker_image or self.image_uri

    def resource_or(self, default: str) -> str:
        return self.resource or default

    def args_for(self, resource: str) -> dict[str, Any]:
        return dict(self.resource_args.get(resource, {}))

    @property
    def is_scheduler(self) -> bool:
        """Whether this item is a sweep scheduler (W&B's rule, so W&B queues behave alike)."""
        if self.uri != SCHEDULER_PLACEHOLDER_URI:
            return False
        if self.resource == LOCAL_PROCESS and not self.job:
            entry = self.overrides.entry_point or []
            return len(entry) >= 3 and entry[:2] == ["wandb", "scheduler"]
        return True

    def to_wire(self) -> dict[str, Any]:
        """The spec as W&B's JSON, with its original key names and unknown keys."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=False)


def resume_spec(run_spec: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """The spec of an item pushed again to resume run `run_id` (W&B's rule for a preempted
    run): same run id, `_resume_count` + 1, and no sweep id, so the resumed run is not
    refused when its sweep has moved on."""
    count = run_spec.get("_resume_count")
    resumed = {k: v for k, v in run_spec.items() if k != "sweep_id"}
    resumed["_resume_count"] = (count if isinstance(count, int) and count >= 0 else 0) + 1
    if run_id:
        resumed["run_id"] = run_id
    return resumed


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad field, `a.b.c: what is wrong`, for messages people read."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


@dataclass
class QueueItem:
    """One item popped from a run queue: W&B's `{runQueueItemId, runSpec}` plus the queue."""

    id: str
    queue: str
    run_spec: dict[str, Any]
    priority: int = 2
    attempt: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        """Dict-style access by W&B's keys, for code written against the reference agent."""
        if key == "runQueueItemId":
            return self.id
        if key == "runSpec":
            return self.run_spec
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default
