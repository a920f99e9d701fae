"""The backend protocol: the operations an agent needs from wherever its queues live.

The meaning of each call follows W&B's launch API (see DESIGN.md), so the SQL backend and
the W&B backend are interchangeable behind `LaunchAgent`. Calls are blocking; the agent
runs them in a worker thread so one slow call never stalls the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agent_lib.spec import QueueItem
from agent_lib.states import AgentStatus, ItemState, Phase


@dataclass
class AgentRecord:
    """The backend's record of one agent (W&B's `launchAgent` query)."""

    id: str
    name: str
    status: str = AgentStatus.POLLING.value
    stop_polling: bool = False
    hostname: str = ""
    queues: list[str] = field(default_factory=list)
    heartbeat_at: float | None = None


@dataclass
class ItemInfo:
    """What a person (or the CLI) wants to know about one queue item."""

    id: str
    queue: str
    state: ItemState
    priority: int
    run_spec: dict[str, Any]
    created_at: float
    updated_at: float
    run_id: str | None = None
    agent_id: str | None = None
    attempts: int = 0
    exit_code: int | None = None
    failure_message: str | None = None
    failure_phase: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    stop_requested: bool = False
    leased_at: float | None = None
    claimed_at: float | None = None
    finished_at: float | None = None


@dataclass
class QueueSummary:
    name: str
    counts: dict[str, int]


@runtime_checkable
class Backend(Protocol):
    """What `LaunchAgent` calls. W&B's operation names are kept where one exists."""

    # -- the agent's own record --
    def create_launch_agent(
        self,
        entity: str | None,
        project: str,
        queues: list[str],
        hostname: str,
        agent_config: dict[str, Any],
        version: str,
    ) -> str:
        """Register an agent; returns its id."""
        ...

    def get_launch_agent(self, agent_id: str) -> AgentRecord: ...

    def update_launch_agent_status(self, agent_id: str, status: AgentStatus) -> bool: ...

    def heartbeat(self, agent_id: str) -> None:
        """Say the agent is alive (the W&B backend folds this into status updates)."""
        ...

    # -- the queue --
    def pop_from_run_queue(
        self, queue: str, entity: str | None, project: str, agent_id: str
    ) -> QueueItem | None:
        """Lease the most urgent pending item of `queue` to `agent_id`, or return None."""
        ...

    def ack_run_queue_item(self, item_id: str, run_id: str) -> bool:
        """Claim a leased item for run `run_id`. False: the lease was lost; do not launch."""
        ...

    def adopt_run_queue_item(self, item_id: str, run_id: str, agent_id: str) -> bool:
        """Take over a CLAIMED item whose run (same run id) is still going, after a restart.

        True if the item is now this agent's; False if it ended or belongs to a live agent.
        """
        ...

    def release_run_queue_item(self, item_id: str) -> None:
        """Give a leased, unacked item back to its queue (e.g. a scheduler over the cap)."""
        ...

    def fail_run_queue_item(
        self, item_id: str, message: str, phase: Phase, files: list[str] | None = None
    ) -> bool: ...

    def update_run_queue_item_warning(
        self, item_id: str, message: str, phase: str, files: list[str] | None = None
    ) -> bool: ...

    def complete_run_queue_item(
        self, item_id: str, state: ItemState, exit_code: int | None = None
    ) -> None:
        """Record a terminal state other than FAILED (FINISHED, STOPPED, PREEMPTED)."""
        ...

    def push_to_run_queue(
        self,
        queue: str,
        run_spec: dict[str, Any],
        priority: int | None = None,
        entity: str | None = None,
        project: str | None = None,
    ) -> str:
        """Add an item; returns its id."""
        ...

    # -- runs and sweeps --
    def run_should_stop(self, entity: str | None, project: str | None, run_id: str) -> bool:
        """Whether someone asked for this run to stop."""
        ...

    def get_sweep_state(
        self, sweep_id: str, entity: str | None, project: str | None
    ) -> str | None: ...

    def set_sweep_state(
        self, sweep_id: str, state: str, entity: str | None, project: str | None
    ) -> None: ...

    # -- wake-up --
    def wait_for_items(self, queues: list[str], timeout: float) -> bool:
        """Block until an item may be waiting in `queues` (True) or `timeout` passes.

        A backend that cannot be told (plain polling) just returns False at once, and the
        agent waits its poll interval instead.
        """
        ...

    def close(self) -> None: ...
