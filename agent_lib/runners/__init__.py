"""Runners: where jobs run. `make_runner` picks one by the spec's `resource`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from agent_lib.errors import SpecError
from agent_lib.lazy import lazy_exports
from agent_lib.runners.base import LaunchContext, Runner, Status, SubmittedRun
from agent_lib.spec import LOCAL_CONTAINER, LOCAL_PROCESS

if TYPE_CHECKING:
    from agent_lib.config import AgentConfig
    from agent_lib.runners.local_process import LocalProcessRunner

__all__ = [
    "LaunchContext",
    "LocalProcessRunner",
    "Runner",
    "Status",
    "SubmittedRun",
    "available_resources",
    "make_runner",
    "register_runner",
]

RunnerFactory = Callable[["AgentConfig"], Runner]


def _local_process(_config: AgentConfig) -> Runner:
    # Imported on use, like the others: `launch-agent push` checks resource names only.
    from agent_lib.runners.local_process import LocalProcessRunner

    return LocalProcessRunner()


def _local_container(config: AgentConfig) -> Runner:
    # Imported on use: the docker SDK costs import time that local-process agents skip.
    from agent_lib.runners.local_container import LocalContainerRunner

    return LocalContainerRunner(config)


def _kubernetes(config: AgentConfig) -> Runner:
    # Imported on use: the Kubernetes client costs import time other agents skip.
    from agent_lib.runners.kubernetes.runner import KubernetesRunner

    return KubernetesRunner(config)


_FACTORIES: dict[str, RunnerFactory] = {
    LOCAL_PROCESS: _local_process,
    LOCAL_CONTAINER: _local_container,
    "kubernetes": _kubernetes,
}


def register_runner(resource: str, factory: RunnerFactory) -> None:
    """Make a resource type available to agents (used for container and cluster runners)."""
    _FACTORIES[resource] = factory


def available_resources() -> list[str]:
    return sorted(_FACTORIES)


def make_runner(resource: str, config: AgentConfig) -> Runner:
    factory = _FACTORIES.get(resource)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES))
        raise SpecError(
            f"resource {resource!r} is not supported by this agent (supported: {known})"
        )
    return factory(config)


__getattr__ = lazy_exports(__name__, {"LocalProcessRunner": "agent_lib.runners.local_process"})
