"""Pydantic models of W&B's launch spec (`runSpec`) and of a popped queue item.

Unknown keys are kept, not dropped: a spec that goes back to a queue (a resumed run)
must carry everything it came with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent_lib.errors import SpecError
from agent_lib.redact import _SECRET_KEY, redact

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
    # Ours: stop and fail the job after this many seconds (the agent's max_runtime if unset).
    max_runtime: float | None = Field(default=None, gt=0)
    wandb_api_key: str | None = Field(default=None, alias="_wandb_api_key", repr=False)

    @classmethod
    def parse(cls, raw: Any) -> LaunchSpec:
        """Validate a raw runSpec; a bad one raises SpecError naming the field and the rule.

        The one gate for hostile input, at push and when the agent takes the item: the raw
        JSON's depth, size and strings are checked first, without recursion, then its shape
        (pydantic), then what reaches a command line, an environment or a path.
        Messages carry field paths and rules only, never the value of a secret-named field.
        """
        if isinstance(raw, str):
            raise SpecError("launch spec must be a JSON object, got a string")
        if not isinstance(raw, dict):
            raise SpecError(f"launch spec must be a JSON object, got {type(raw).__name__}")
        _check_raw(raw)
        problem: str | None = None
        try:
            spec = cls.model_validate(raw)
        except ValidationError as exc:
            # The message is built here and raised below, so the ValidationError (whose
            # text shows input values, secrets included) is not chained to it.
            problem = describe_validation_error(exc)
        if problem is not None:
            raise SpecError(f"{_PREFIX}{problem}")
        _check_fields(spec)
        return spec

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


# -- the gate for hostile input: limits, and checks that name the field and the rule --

# The raw JSON: how deep, how large (compact JSON, UTF-8 bytes).
MAX_DEPTH = 32
MAX_SPEC_BYTES = 256 * 1024
# Linux refuses one argv or environment string over MAX_ARG_STRLEN (128 KiB, its NUL
# included) with E2BIG; the whole command line is kept well below ARG_MAX as well.
MAX_ARG_STRLEN = 128 * 1024
MAX_ARGV_BYTES = 128 * 1024
# Names that reach W&B, the environment, log lines and folder names.
MAX_NAME_CHARS = 128
MAX_JOB_CHARS = 512  # entity/project/name:alias
MAX_REFERENCE_CHARS = 2048  # image references, uri, git url and version
MAX_PATH_BYTES = 4095  # PATH_MAX, its NUL excluded
MAX_PATH_PART_BYTES = 255  # NAME_MAX
MAX_INT_BITS = 1024  # numbers beyond this are not data; str() of huge ones even fails

RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PREFIX = "invalid launch spec: "
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_.:/@+-]{1,64}")
_SHOWN_CHARS = 40
_MAX_PATH_TEXT = 240
_MAX_ERRORS_SHOWN = 5
_NAMES = (
    ("name", MAX_NAME_CHARS),
    ("project", MAX_NAME_CHARS),
    ("entity", MAX_NAME_CHARS),
    ("job", MAX_JOB_CHARS),
    ("sweep_id", MAX_NAME_CHARS),
    ("author", MAX_NAME_CHARS),
    ("resource", MAX_NAME_CHARS),
    ("image_uri", MAX_REFERENCE_CHARS),
    ("uri", MAX_REFERENCE_CHARS),
)
_SECRET_FIELDS = ("_wandb_api_key", "wandb_api_key")
# resource_args keys the local runners read as an environment or a working directory
# (local-container takes docker CLI spellings: see runners/local_container.py `_key`).
_CONTAINER_ENV_KEYS = frozenset({"env", "e", "environment"})
_CONTAINER_WORKDIR_KEYS = frozenset({"workdir", "w", "working-dir"})

FieldPath = tuple[str | int, ...]


def _fail(path: FieldPath, rule: str) -> SpecError:
    return SpecError(redact(f"{_PREFIX}{_where(path)}: {rule}"))


def _where(path: Sequence[Any]) -> str:
    """A dotted field path; keys that are odd (long, control characters) are quoted."""
    if not path:
        return "(root)"
    text = ".".join(_segment(part) for part in path)
    return text if len(text) <= _MAX_PATH_TEXT else text[:_MAX_PATH_TEXT] + "..."


def _segment(part: Any) -> str:
    if isinstance(part, str) and _PLAIN_SEGMENT.fullmatch(part):
        return part
    if isinstance(part, int):
        return str(part)
    return _short(str(part))


def _short(text: str) -> str:
    """A short, ASCII-only repr: no NUL, surrogate or escape sequence reaches a message."""
    if len(text) <= _SHOWN_CHARS:
        return ascii(text)
    return ascii(text[:_SHOWN_CHARS]) + "..."


def _is_secret(path: Sequence[Any]) -> bool:
    return any(isinstance(part, str) and _SECRET_KEY.search(part) for part in path)


def _got(path: FieldPath, value: str) -> str:
    """` (got '...')`, or nothing for a field whose name says it holds a secret."""
    return "" if _is_secret(path) else f" (got {redact(_short(value))})"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _check_raw(raw: dict[str, Any]) -> None:
    """Depth, size, key types and strings of the raw JSON, walked without recursion.

    Nothing here recurses, so a spec nested thousands of levels deep is refused at its
    33rd level, before pydantic, json.dumps or anything else that recurses sees it."""
    total = 0
    by_field: dict[str, int] = {}
    stack: list[tuple[Any, FieldPath, int]] = [(raw, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, dict | list | tuple) and depth > MAX_DEPTH:
            raise _fail(path, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            size = 1 + len(value) * 2  # braces, a colon and a comma (or brace) per key
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _fail(path, f"has a key that is not a string (a {_kind(key)})")
                where = (*path, key)
                _check_text(where, key, "the key")
                size += _text_size(key)
                stack.append((item, where, depth + 1))
        elif isinstance(value, list | tuple):
            size = 1 + max(len(value), 1)  # brackets and commas
            stack.extend((item, (*path, i), depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(path, value, "")
            size = _text_size(value)
        elif value is None or isinstance(value, bool):
            size = 5
        elif isinstance(value, int):
            if value.bit_length() > MAX_INT_BITS:
                raise _fail(path, f"is a number of more than {MAX_INT_BITS} bits")
            size = len(str(value))
        elif isinstance(value, float):
            size = len(repr(value))
        else:
            raise _fail(path, f"is not a JSON value (a {type(value).__name__})")
        total += size
        if path:
            by_field[str(path[0])] = by_field.get(str(path[0]), 0) + size
    if total > MAX_SPEC_BYTES:
        detail = ""
        if by_field:
            largest = max(by_field, key=by_field.__getitem__)
            detail = f" (largest field: {_where((largest,))}, {by_field[largest]} bytes)"
        raise _fail(
            (),
            f"the spec is {total} bytes of JSON, over the limit of {MAX_SPEC_BYTES} bytes{detail}",
        )
    for name in _SECRET_FIELDS:
        secret = raw.get(name)
        if secret is not None and not isinstance(secret, str):
            raise _fail((name,), f"must be a string, not a {_kind(secret)} (value not shown)")


def _check_text(path: FieldPath, text: str, what: str) -> None:
    """No NUL (it ends a C string: argv, environment, paths) and no lone surrogate."""
    subject = f"{what} contains" if what else "contains"
    nul = text.find("\x00")
    if nul >= 0:
        where = "" if _is_secret(path) else f" at position {nul}"
        raise _fail(path, f"{subject} a NUL character (\\x00){where}")
    found = _SURROGATE.search(text)
    if found is not None:
        where = "" if _is_secret(path) else f" at position {found.start()}"
        raise _fail(
            path,
            f"{subject} a lone surrogate (U+{ord(found.group()):04X}{where}), "
            "which is not valid UTF-8",
        )


def _text_size(text: str) -> int:
    """Bytes of `text` as a compact UTF-8 JSON string (surrogates already refused)."""
    if len(text) > MAX_SPEC_BYTES:
        return len(text) + 2  # over the limit whatever it holds; no need to encode it
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))


def _check_fields(spec: LaunchSpec) -> None:
    """What reaches a command line, an environment, a path or a name, field by field."""
    if spec.run_id is not None and not RUN_ID.fullmatch(spec.run_id):
        raise _fail(
            ("run_id",),
            "must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -" + _got(("run_id",), spec.run_id),
        )
    for name, limit in _NAMES:
        _check_name((name,), getattr(spec, name), limit)
    _check_name(("docker", "docker_image"), spec.docker.docker_image, MAX_REFERENCE_CHARS)
    if spec.git is not None:
        _check_name(("git", "url"), spec.git.url, MAX_REFERENCE_CHARS)
        _check_name(("git", "version"), spec.git.version, MAX_REFERENCE_CHARS)
    _check_argv(spec.overrides)
    _check_run_config(spec.overrides.run_config)
    for resource, args in spec.resource_args.items():
        _check_resource_args(resource, args)


def _check_name(path: FieldPath, value: str | None, limit: int) -> None:
    if value is None:
        return
    if len(value) > limit:
        raise _fail(path, f"is {len(value)} characters, over the limit of {limit}")
    found = _CONTROL.search(value)
    if found is not None:
        raise _fail(
            path,
            f"contains a control character (U+{ord(found.group()):04X} at position "
            f"{found.start()})",
        )


def _check_argv(overrides: Overrides) -> None:
    """Each argument, and entry_point + args together, within what execve takes."""
    total = 0
    parts = (("entry_point", overrides.entry_point or []), ("args", overrides.args))
    for field_name, argv in parts:
        for i, arg in enumerate(argv):
            size = len(arg.encode("utf-8")) + 1
            if size > MAX_ARG_STRLEN:
                raise _fail(
                    ("overrides", field_name, i),
                    f"one argument is {size - 1} bytes, over the limit of "
                    f"{MAX_ARG_STRLEN - 1} bytes per argument",
                )
            total += size
    if total > MAX_ARGV_BYTES:
        where = "args" if overrides.args else "entry_point"
        raise _fail(
            ("overrides", where),
            f"the command line (overrides.entry_point + overrides.args) is {total} bytes, "
            f"over the limit of {MAX_ARGV_BYTES} bytes",
        )


# run_config reaches the job as WANDB_CONFIG, or, when longer than one variable may be,
# in parts WANDB_CONFIG_0..n (W&B's rule); all parts together stay well within ARG_MAX.
MAX_RUN_CONFIG_JSON = 512 * 1024


def _check_run_config(run_config: dict[str, Any]) -> None:
    """run_config's JSON, which the job gets in WANDB_CONFIG (or WANDB_CONFIG_0..n)."""
    limit = MAX_RUN_CONFIG_JSON
    size = len(json.dumps(run_config))  # depth already bounded: this cannot recurse far
    if size > limit:
        raise _fail(
            ("overrides", "run_config"),
            f"is {size} bytes as JSON (the job gets it in WANDB_CONFIG_0..n), over the limit "
            f"of {limit} bytes",
        )


def _check_resource_args(resource: str, args: dict[str, Any]) -> None:
    for key, value in args.items():
        path: FieldPath = ("resource_args", resource, key)
        if resource == LOCAL_PROCESS:
            if key == "env":
                _check_env(path, value)
            elif key == "cwd":
                _check_path(path, value)
        elif resource == LOCAL_CONTAINER:
            name = key.strip().lower().replace("_", "-").lstrip("-")
            if name in _CONTAINER_ENV_KEYS:
                _check_env(path, value)
            elif name in _CONTAINER_WORKDIR_KEYS and isinstance(value, str):
                _check_path(path, value)


def _check_env(path: FieldPath, value: Any) -> None:
    """A mapping {NAME: value} or a list of "NAME=value" strings (docker CLI style).

    Values are never shown: any of them may be a secret."""
    if value is None:
        return
    if isinstance(value, dict):
        for name, val in value.items():
            where = (*path, name)
            _check_env_name(where, name, "")
            if not isinstance(val, str | int | float):  # bool is an int
                raise _fail(
                    where, f"the value must be a string, number or boolean, not a {_kind(val)}"
                )
            _check_env_size(where, name, str(val))
    elif isinstance(value, list | tuple):
        for i, entry in enumerate(value):
            where = (*path, i)
            if not isinstance(entry, str):
                raise _fail(where, f"must be a NAME=value string, not a {_kind(entry)}")
            name, sep, text = entry.partition("=")
            if not sep:
                raise _fail(where, "must be a NAME=value string (it has no '=')")
            _check_env_name(where, name, f" ({_short(name)})")
            _check_env_size(where, name, text)
    else:
        raise _fail(
            path, f"must be a mapping or a list of NAME=value strings, not a {_kind(value)}"
        )


def _check_env_name(path: FieldPath, name: str, shown: str) -> None:
    if not ENV_NAME.fullmatch(name):
        raise _fail(
            path,
            f"the name{shown} is not a valid environment variable name "
            "(letters, digits and _, not starting with a digit)",
        )


def _check_env_size(path: FieldPath, name: str, text: str) -> None:
    size = len(name.encode("utf-8")) + 1 + len(text.encode("utf-8")) + 1
    if size > MAX_ARG_STRLEN:
        raise _fail(
            path,
            f"the variable is {size} bytes, over the limit of {MAX_ARG_STRLEN} bytes "
            "for one environment variable",
        )


def _check_path(path: FieldPath, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise _fail(path, f"must be a string (a path), not a {_kind(value)}")
    size = len(value.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise _fail(path, f"is {size} bytes, over the limit of {MAX_PATH_BYTES} bytes for a path")
    for part in value.split("/"):
        part_size = len(part.encode("utf-8"))
        if part_size > MAX_PATH_PART_BYTES:
            raise _fail(
                path,
                f"has a path component of {part_size} bytes, over the limit of "
                f"{MAX_PATH_PART_BYTES} bytes",
            )


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
    """One part per bad field, `a.b.c: what is wrong`, for messages people read.

    Only the field path and pydantic's rule are used, never the input (it may be a secret);
    a spec with many bad fields shows the first few."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    parts = [f"{_where(err['loc'])}: {redact(err['msg'])[:200]}" for err in errors]
    shown = "; ".join(parts[:_MAX_ERRORS_SHOWN])
    if len(parts) > _MAX_ERRORS_SHOWN:
        shown += f" (and {len(parts) - _MAX_ERRORS_SHOWN} more)"
    return shown


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
