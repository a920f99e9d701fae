"""agent_lib: the launch agent engine. Runs on its own; imports no Prefect.

from agent_lib import LaunchAgent, AgentConfig, open_backend

config = AgentConfig.load(queues=["default"], max_jobs=4)
agent = LaunchAgent(open_backend(config.resolved_backend_url), config)
asyncio.run(agent.loop())
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from agent_lib.lazy import lazy_exports

if TYPE_CHECKING:
    from agent_lib.agent import JobAndQueue, LaunchAgent
    from agent_lib.backends import Backend, SqlBackend, open_backend
    from agent_lib.config import AgentConfig
    from agent_lib.errors import LaunchError, SpecError
    from agent_lib.hooks import AgentHooks
    from agent_lib.spec import LaunchSpec, QueueItem
    from agent_lib.states import AgentStatus, ItemState, Phase, RunState

# Where each public name lives. Imported on first use, so that `import agent_lib.cli` (a
# `launch-agent push`) does not pay for the agent, the runners and every backend.
_EXPORTS = {
    "JobAndQueue": "agent_lib.agent",
    "LaunchAgent": "agent_lib.agent",
    "Backend": "agent_lib.backends",
    "SqlBackend": "agent_lib.backends",
    "open_backend": "agent_lib.backends",
    "AgentConfig": "agent_lib.config",
    "LaunchError": "agent_lib.errors",
    "SpecError": "agent_lib.errors",
    "AgentHooks": "agent_lib.hooks",
    "LaunchSpec": "agent_lib.spec",
    "QueueItem": "agent_lib.spec",
    "AgentStatus": "agent_lib.states",
    "ItemState": "agent_lib.states",
    "Phase": "agent_lib.states",
    "RunState": "agent_lib.states",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "AgentConfig",
    "AgentHooks",
    "AgentStatus",
    "Backend",
    "ItemState",
    "JobAndQueue",
    "LaunchAgent",
    "LaunchError",
    "LaunchSpec",
    "Phase",
    "QueueItem",
    "RunState",
    "SpecError",
    "SqlBackend",
    "__version__",
    "open_backend",
]
