"""Builders: `make_builder` picks one from the agent's `builder` config and the spec's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_lib.builders.base import Builder
from agent_lib.builders.noop import NoopBuilder
from agent_lib.config import AgentConfig
from agent_lib.errors import SpecError

__all__ = ["Builder", "NoopBuilder", "make_builder", "register_builder"]

BuilderFactory = Callable[[AgentConfig, dict[str, Any]], Builder]


def _docker(config: AgentConfig, settings: dict[str, Any]) -> Builder:
    # Imported on use: the docker SDK costs import time that local-process agents skip.
    from agent_lib.builders.docker import DockerBuilder

    return DockerBuilder(config, settings)


_FACTORIES: dict[str, BuilderFactory] = {
    "noop": lambda _config, _settings: NoopBuilder(),
    "docker": _docker,
}


def register_builder(kind: str, factory: BuilderFactory) -> None:
    _FACTORIES[kind] = factory


def make_builder(config: AgentConfig, spec_builder: dict[str, Any] | None) -> Builder:
    """The spec's `builder` settings override the agent's, key by key (as in W&B)."""
    settings = {**config.builder, **(spec_builder or {})}
    kind = str(settings.get("type") or "noop")
    factory = _FACTORIES.get(kind)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES))
        raise SpecError(f"builder type {kind!r} is not available (available: {known})")
    return factory(config, settings)
