"""agent_lib: the launch agent engine. Runs on its own; imports no Prefect.

from agent_lib import LaunchAgent, AgentConfig, open_backend

config = AgentConfig.load(queues=["default"], max_jobs=4)
agent = LaunchAgent(open_backend(config.resolved_backend_url), config)
asyncio.run(agent.loop())
"""

__version__ = "0.1.0"

from agent_lib.agent import JobAndQueue, LaunchAgent
from agent_lib.backends import Backend, SqlBackend, open_backend
from agent_lib.config import AgentConfig
from agent_lib.errors import LaunchError, SpecError
from agent_lib.hooks import AgentHooks
from agent_lib.spec import LaunchSpec, QueueItem
from agent_lib.states import AgentStatus, ItemState, Phase, RunState

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
