"""The small vocabularies shared by every piece: item states, run states, phases."""

from __future__ import annotations

from enum import StrEnum


class ItemState(StrEnum):
    """Where a run queue item is in its life.

    PENDING -> LEASED (popped, lease running) -> CLAIMED (acked with a run id) -> terminal.
    A lease that is not acked in time sends the item back to PENDING.
    """

    PENDING = "PENDING"
    LEASED = "LEASED"
    CLAIMED = "CLAIMED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    PREEMPTED = "PREEMPTED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_ITEM_STATES


TERMINAL_ITEM_STATES = frozenset(
    {ItemState.FINISHED, ItemState.FAILED, ItemState.STOPPED, ItemState.PREEMPTED}
)


class RunState(StrEnum):
    """The state of a launched job, as a runner reports it (W&B's `Status.state`)."""

    UNKNOWN = "unknown"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    FINISHED = "finished"
    PREEMPTED = "preempted"

    @property
    def is_terminal(self) -> bool:
        return self in (RunState.STOPPED, RunState.FAILED, RunState.FINISHED, RunState.PREEMPTED)


class AgentStatus(StrEnum):
    """What the agent reports about itself to the backend (W&B's agentStatus values)."""

    POLLING = "POLLING"
    RUNNING = "RUNNING"
    KILLED = "KILLED"


class Phase(StrEnum):
    """The phase in which an item failed (W&B's `stage` of failRunQueueItem)."""

    AGENT = "agent"
    BUILD = "build"
    RUN = "run"
