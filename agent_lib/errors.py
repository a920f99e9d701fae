"""Exceptions that carry the phase a failure belongs to, so the item's report says where."""

from __future__ import annotations

from agent_lib.states import Phase


class LaunchError(Exception):
    """A job could not be launched or run; `phase` says which step failed."""

    phase: Phase = Phase.AGENT

    def __init__(self, message: str, phase: Phase | None = None) -> None:
        super().__init__(message)
        if phase is not None:
            self.phase = phase


class SpecError(LaunchError):
    """The launch spec of an item is malformed or not allowed; the message names the field."""


class BuildError(LaunchError):
    """The builder could not turn the job's source into an image."""

    phase = Phase.BUILD


class RunFailedError(LaunchError):
    """The job ran and ended badly (non-zero exit, out of memory, start timeout...)."""

    phase = Phase.RUN


class ConfigError(ValueError):
    """The agent's configuration is invalid; the message names the key and its source."""


class BackendError(RuntimeError):
    """The queue backend failed an operation (after its own retries)."""


class WandbAuthError(BackendError):
    """W&B refused the API key (401) or its user lacks access (403)."""


class SchemaVersionError(BackendError):
    """The backend's schema is newer than this agent knows how to use."""


class TransientError(RuntimeError):
    """A failure worth retrying: the backend or the engine was briefly unavailable."""


class LeaseLostError(RuntimeError):
    """The item's lease went to another agent before we acked it: drop it, launch nothing."""
