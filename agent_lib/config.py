"""Agent configuration: W&B's launch-config.yaml keys plus ours.

Sources, highest precedence first: init arguments, environment variables
(`LAUNCH_AGENT_<KEY>`), a YAML file, defaults. Errors name the key and where it came from.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from agent_lib.errors import ConfigError
from agent_lib.yaml_text import load_yaml

ENV_PREFIX = "LAUNCH_AGENT_"
CONFIG_FILE_ENV = "LAUNCH_AGENT_CONFIG"
DEFAULT_PROJECT = "model-registry"

# LAUNCH_AGENT_* variables that are not config keys: the config file's own variable, and
# the test suite's and crash-injection switches. Any other one is a typo, and is warned of.
NON_CONFIG_ENV = frozenset(
    {
        CONFIG_FILE_ENV,
        "LAUNCH_AGENT_CRASH_AT",
        "LAUNCH_AGENT_REQUIRE_SERVICES",
        "LAUNCH_AGENT_FORK_SERVER",  # read by the local-process runner
    }
)
NON_CONFIG_ENV_PREFIXES = ("LAUNCH_AGENT_TEST_",)

log = logging.getLogger(__name__)
_config_file: ContextVar[Path | None] = ContextVar("launch_agent_config_file", default=None)


def default_data_dir() -> Path:
    """Per-user data folder (XDG): the embedded queue and the jobs' folders live here."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "launch-agent"


def default_config_file() -> Path | None:
    """`$LAUNCH_AGENT_CONFIG`, else `~/.config/launch-agent/launch-config.yaml` if it exists."""
    explicit = os.environ.get(CONFIG_FILE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    candidate = Path(base) / "launch-agent" / "launch-config.yaml"
    return candidate if candidate.exists() else None


MAX_QUEUE_NAME = 128  # what the SQL backend's column holds


def queue_name_problem(name: str) -> str | None:
    """Why `name` cannot be a queue's name (empty, blank, too long, control characters)."""
    if not name.strip():
        return f"a queue name must not be empty or blank (got {name!r})"
    if len(name) > MAX_QUEUE_NAME:
        return f"a queue name is at most {MAX_QUEUE_NAME} characters (got {len(name)})"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"a queue name must not contain control characters (got {name!r})"
    return None


class JobDefinition(BaseModel):
    """A named job (W&B's job artifact, kept in config): items run it with `job: <name>`.

    In secure mode only named jobs run, and an item may change only what the job allows:
    its `run_config` always, its `args` only with `allow_args: true`.
    """

    model_config = ConfigDict(extra="forbid")

    entry_point: list[str] = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    image: str | None = None
    resource: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    allow_args: bool = False


class AgentConfig(BaseSettings):
    """Everything an agent needs to know. See README, "Configuration", for each key."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
        allow_inf_nan=False,  # an `inf` interval or timeout would stall the agent for good
    )

    # -- W&B launch-config.yaml keys --
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["default"], min_length=1
    )
    entity: str | None = None
    project: str = DEFAULT_PROJECT
    max_jobs: int = 1
    max_schedulers: int = 1
    secure_mode: bool = False
    verbosity: int = Field(default=0, ge=0, le=3)
    stopped_run_timeout: float = Field(default=60.0, ge=0)
    builder: dict[str, Any] = Field(default_factory=dict)
    registry: dict[str, Any] = Field(default_factory=dict)
    environment: dict[str, Any] = Field(default_factory=dict)

    # -- ours --
    # The agent's identity. Unset: one per host and data dir (a second agent on the same
    # data dir gets the next slot). A restarted agent with the same identity takes its
    # running jobs back.
    name: str | None = Field(default=None, min_length=1, max_length=100)
    backend_url: str | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    # An idle agent looks for items this often; a push wakes it at once (PostgreSQL
    # NOTIFY, a datagram on a SQLite file), so this only bounds what no push announces.
    poll_interval: float = Field(default=1.0, gt=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_interval: float = Field(default=5.0, gt=0)
    # An agent silent for this long is lost: its leased items go back to the queue, its
    # running ones are marked FAILED (phase agent) unless it comes back or is re-attached.
    agent_timeout: float = Field(default=30.0, gt=0)
    # What other agents do with this agent's running items once it is lost for good:
    # fail them (phase agent) or requeue them to resume as the same run.
    on_agent_lost: Literal["fail", "requeue"] = "fail"
    status_interval: float = Field(default=30.0, gt=0)
    # How often an agent with running jobs looks for stop requests (PostgreSQL: also at
    # once on NOTIFY); on W&B, how often each job asks whether its run should stop.
    stop_check_interval: float = Field(default=0.5, gt=0)
    start_timeout: float = Field(default=1800.0, ge=0)
    cancel_grace: float = Field(default=10.0, ge=0)
    launch_retries: int = Field(default=2, ge=0)
    default_resource: str = "local-process"
    on_stop: Literal["wait", "requeue"] = "wait"
    exit_when_idle: bool = False
    log_tail_lines: int = Field(default=100, gt=0)
    max_resume_count: int = Field(default=5, ge=0)
    # Exit codes by which a job says "I was preempted, resume me" (requeued as a SIGTERM is).
    preempt_exit_codes: list[int] = Field(default_factory=list)
    # Stop and fail a job that runs longer than this many seconds (an item's own
    # `max_runtime` wins); unset: no limit.
    max_runtime: float | None = Field(default=None, gt=0)
    jobs: dict[str, JobDefinition] = Field(default_factory=dict)
    # What of the agent's own environment a job sees, besides a small allow-list (PATH,
    # HOME, LANG, ...): nothing (false), all but the agent's secrets (true), or these names.
    inherit_env: bool | list[str] = False
    # Variables every job gets (a named job's `env` and the W&B contract win over these).
    job_env: dict[str, str] = Field(default_factory=dict)
    # Hand over to a fresh agent after this many jobs / seconds (stop popping, finish, exit).
    stop_after_jobs: int | None = Field(default=None, gt=0)
    stop_after_seconds: float | None = Field(default=None, gt=0)
    # W&B backend politeness: for `quick_poll_seconds` after activity (start, an item, a
    # job's end) queues are polled once a second; then every `idle_poll_interval` seconds
    # (W&B's own agent: 10 s), so an idle agent costs W&B no more than W&B's agent does.
    idle_poll_interval: float = Field(default=10.0, gt=0)
    quick_poll_seconds: float = Field(default=60.0, ge=0)

    # -- local-container runner (the docker builder reads the `builder` dict above) --
    # resource_args keys refused by default that this agent accepts anyway, e.g.
    # ["privileged", "network", "volume", "device", "cap-add"]; see README, Containers.
    container_allow: list[str] = Field(default_factory=list)
    # Remove a job's container once it ended and its logs are in the job folder.
    # (kubernetes: delete the job's Job once its item is settled.)
    remove_containers: bool = True

    # -- kubernetes runner; see README, Kubernetes --
    # A kubeconfig file and context; neither set: the pod's service account when the agent
    # runs in a cluster, else $KUBECONFIG or ~/.kube/config and its current context.
    kube_config: Path | None = None
    kube_context: str | None = None
    # Where Jobs go unless an item's manifest says (default: the context's, or "default").
    kube_namespace: str | None = None
    # Manifest keys refused by default that this agent accepts anyway: hostPID, hostIPC,
    # hostNetwork, privileged, capabilities, hostPath, and (secure mode) command.
    kubernetes_allow: list[str] = Field(default_factory=list)

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queue_string(cls, value: Any) -> Any:
        """Accept `a,b` or a JSON list from an environment variable, as well as a YAML list."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)
        if isinstance(value, str):
            return [q.strip() for q in value.split(",") if q.strip()]
        return value

    @field_validator("queues")
    @classmethod
    def _valid_queue_names(cls, value: list[str]) -> list[str]:
        for name in value:
            problem = queue_name_problem(name)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_not_empty(cls, value: Any) -> Any:
        """An empty path would be the current folder: a queue file wherever one stands."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("max_jobs", "max_schedulers")
    @classmethod
    def _minus_one_is_unlimited(cls, value: int) -> int:
        if value < -1:
            raise ValueError("must be -1 (unlimited) or a number >= 0")
        return value

    @model_validator(mode="after")
    def _timeout_outlasts_heartbeats(self) -> AgentConfig:
        if self.agent_timeout < 2 * self.heartbeat_interval:
            raise ValueError(
                f"agent_timeout ({self.agent_timeout:g}s) must be at least twice "
                f"heartbeat_interval ({self.heartbeat_interval:g}s), or a live agent that "
                "misses one heartbeat is taken for lost"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> AgentConfig:
        """Build a config from overrides, the environment and a YAML file (if any).

        `config_file=None` looks for the default file; errors raise ConfigError.
        """
        path = Path(config_file) if config_file is not None else default_config_file()
        warn_unknown_environment()
        file_keys = _read_yaml_keys(path) if path is not None else set()
        given = {k: v for k, v in overrides.items() if v is not None}
        token = _config_file.set(path)
        try:
            return cls(**given)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, given, file_keys, path)) from exc
        except SettingsError as exc:
            raise ConfigError(f"invalid agent config: {exc} ({exc.__cause__})") from exc
        finally:
            _config_file.reset(token)

    # -- derived values --
    @property
    def resolved_backend_url(self) -> str:
        """backend_url, else $DATABASE_URL if it names a database we speak, else SQLite."""
        database_url = os.environ.get("DATABASE_URL", "")
        if not self.backend_url and database_url.startswith(("postgres", "sqlite")):
            return database_url
        return self.backend_url or f"sqlite:///{self.data_dir / 'queue.db'}"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def job_limit(self) -> float:
        return float("inf") if self.max_jobs == -1 else float(self.max_jobs)

    @property
    def scheduler_limit(self) -> float:
        return float("inf") if self.max_schedulers == -1 else float(self.max_schedulers)

    def public_dict(self) -> dict[str, Any]:
        """The config as sent to a backend's agent record: no secrets, JSON-friendly."""
        data = self.model_dump(mode="json", exclude={"jobs"})
        data.pop("project", None)
        return data


def _read_yaml_keys(path: Path) -> set[str]:
    """The top-level keys of the config file; a missing or broken file is a ConfigError."""
    try:
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a config file")
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a text file (byte {exc.start} is not UTF-8); the config is a YAML file"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from exc
    except ValueError as exc:  # not YAML
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of keys to values")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {key!r} is not a name (see README, Configuration)")
    return set(data)


def warn_unknown_environment() -> list[str]:
    """Warn of each LAUNCH_AGENT_* variable that names no config key (a typo is otherwise
    silently ignored), with the closest key; returns the names warned of."""
    keys = sorted(AgentConfig.model_fields)
    unknown = []
    for var in sorted(os.environ):
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NON_CONFIG_ENV:
            continue
        key = upper[len(ENV_PREFIX) :].lower()
        if key in keys or upper.startswith(NON_CONFIG_ENV_PREFIXES):
            continue
        unknown.append(var)
        close = (
            difflib.get_close_matches(key, keys, n=1)
            or [k for k in keys if key and (k.startswith(key) or key in k)][:1]
        )
        hint = (
            f"did you mean {ENV_PREFIX}{close[0].upper()}?"
            if close
            else "see README, Configuration, for the keys"
        )
        log.warning("environment variable %s is not a config key, ignored (%s)", var, hint)
    return unknown


def _explain(
    exc: ValidationError, given: dict[str, Any], file_keys: set[str], path: Path | None
) -> str:
    """Turn a ValidationError into lines that name the key and the source it came from."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = loc[0] if loc else "(config)"
        where = ".".join(loc) or key
        if key in given:
            source = "argument"
        elif f"{ENV_PREFIX}{key.upper()}" in os.environ:
            source = f"environment variable {ENV_PREFIX}{key.upper()}"
        elif key in file_keys and path is not None:
            source = str(path)
        else:
            source = "config"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (see README, Configuration, for the keys)"
        lines.append(f"{source}: {where}: {message}")
    return "invalid agent config:\n  " + "\n  ".join(lines)
