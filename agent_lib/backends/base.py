"""The backend protocol: the operations an agent needs from wherever its queues live.

The meaning of each call follows W&B's launch API (see DESIGN.md), so the SQL backend and
the W&B backend are interchangeable behind `LaunchAgent`. Calls are blocking; the agent
runs them in a worker thread so one slow call never stalls the loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
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
    # Grows by one at each start of the same agent: the fencing token its leases carry.
    generation: int = 0


@dataclass(frozen=True)
class Lease:
    """An item handed to one incarnation of one agent: what `ack`, `complete` and `fail`
    take, so a backend needs no memo of what it gave out.

    `generation` fences: once the same agent has started again (a higher generation), a
    write that carries an older lease is refused, so an old incarnation that is somehow
    still alive can no longer change the item. `run_id` is set once the item is acked.
    """

    item: QueueItem
    agent_id: str
    generation: int = 0
    expires_at: float | None = None
    run_id: str | None = None
    entity: str | None = None
    project: str | None = None

    @property
    def item_id(self) -> str:
        return self.item.id

    @property
    def queue(self) -> str:
        return self.item.queue

    def claimed(self, run_id: str) -> Lease:
        """The same lease once acked for `run_id`."""
        return replace(self, run_id=run_id)

    def __getitem__(self, key: str) -> Any:
        """W&B-style access (`lease["runQueueItemId"]`, `lease["runSpec"]`)."""
        return self.item[key]


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
    stop_requested_by: str | None = None
    stop_requested_at: float | None = None
    leased_at: float | None = None
    claimed_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class StopRequest:
    """Someone asked a running item to stop: who (as they named themselves) and when."""

    item_id: str
    requested_by: str | None = None
    requested_at: float | None = None

    def describe(self) -> str:
        who = f" by {self.requested_by}" if self.requested_by else ""
        when = ""
        if self.requested_at is not None:
            when = time.strftime(" at %Y-%m-%d %H:%M:%S", time.localtime(self.requested_at))
        return f"stopped on request{who}{when}"


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
        name: str | None = None,
    ) -> str:
        """Register an agent; returns its id.

        With a `name`, a backend that keeps stable identities registers the same agent
        again (same id, generation + 1) rather than a new one."""
        ...

    def get_launch_agent(self, agent_id: str) -> AgentRecord: ...

    def update_launch_agent_status(self, agent_id: str, status: AgentStatus) -> bool: ...

    def heartbeat(self, agent_id: str) -> None:
        """Say the agent is alive (the W&B backend folds this into status updates)."""
        ...

    # -- the queue --
    def pop_from_run_queue(
        self, queue: str, entity: str | None, project: str, agent_id: str, generation: int = 0
    ) -> Lease | None:
        """Lease the most urgent pending item of `queue` to `agent_id`, or return None."""
        ...

    def ack_run_queue_item(self, lease: Lease, run_id: str) -> Lease | None:
        """Claim a leased item for run `run_id`; the claimed lease, or None if the lease
        was lost (expired and went elsewhere, or fenced): then launch nothing."""
        ...

    def release_run_queue_item(self, lease: Lease) -> None:
        """Give a leased, unacked item back to its queue (e.g. a scheduler over the cap)."""
        ...

    def fail_run_queue_item(
        self,
        lease: Lease,
        message: str,
        phase: Phase,
        files: list[str] | None = None,
        exit_code: int | None = None,
    ) -> bool:
        """Mark the item FAILED. False: the lease no longer holds (fenced or settled)."""
        ...

    def update_run_queue_item_warning(
        self, item_id: str, message: str, phase: str, files: list[str] | None = None
    ) -> bool: ...

    def complete_run_queue_item(
        self, lease: Lease, state: ItemState, exit_code: int | None = None
    ) -> bool:
        """Record a terminal state other than FAILED (FINISHED, STOPPED, PREEMPTED).

        False: the lease no longer holds (fenced or settled elsewhere)."""
        ...

    def requeue_run_queue_item(
        self, lease: Lease, run_spec: dict[str, Any], exit_code: int | None = None
    ) -> str | None:
        """End the item PREEMPTED and push `run_spec` (its resume) to the same queue, as one
        step: a crash between the two can neither lose the job nor run it twice.

        Returns the new item's id, or None if the lease no longer holds."""
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


@runtime_checkable
class RecoveringBackend(Protocol):
    """A backend that knows agents as stable identities, so a restarted agent takes its
    own items back (the SQL backend; W&B registers a new agent at each start)."""

    def reclaim_items(self, agent_id: str, generation: int) -> list[Lease]:
        """At an agent's start: its LEASED items of older generations go back to their
        queues (never launched); its CLAIMED items (and those failed only because it was
        lost) are returned as leases of `generation`, to be re-attached or launched."""
        ...

    def taken_items(self, agent_id: str) -> list[Lease]:
        """Items taken from this agent while it was lost (requeued to resume elsewhere):
        the agent stops its own copies of their jobs, then calls `forget_taken_item`."""
        ...

    def forget_taken_item(self, lease: Lease) -> None: ...


@runtime_checkable
class StoppingBackend(Protocol):
    """A backend on which a stop request means "kill it now": nothing in the job listens
    for it (our own queues). On W&B the run's SDK stops itself, and the agent only kills
    it after `stopped_run_timeout`."""

    def stop_requests(self, agent_id: str) -> list[StopRequest]: ...


@runtime_checkable
class RenewingBackend(Protocol):
    """A backend whose leases the holder can extend while it prepares an item."""

    def renew_leases(self, leases: list[Lease]) -> int: ...


@runtime_checkable
class ReapingBackend(Protocol):
    """A backend where live agents settle the items of agents whose heartbeat stopped."""

    def reap_lost_agents(self) -> list[Any]: ...
