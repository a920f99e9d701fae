"""Agent liveness in the SQL backend: who is lost, what happens to their items, who may adopt.

The rules (they hold on SQLite and PostgreSQL alike):

1. Every agent heartbeats (`heartbeat`, every `heartbeat_interval`). It declares its own
   `agent_timeout` when it registers (default 30 s).
2. An agent is LOST when its last heartbeat is older than its `agent_timeout`. Any live
   agent that finds one marks it (`lost_at`) and, in the same transaction:
   - its LEASED items (popped, not yet acked, so never launched) go back to PENDING at
     once, to be popped by anyone;
   - its CLAIMED items (launched) become FAILED, phase `agent`, with a message saying
     the agent was lost, and remember it (`items.lost_at`): their jobs may still run.
   An agent judges others only after the database has answered it without a break for
   their whole timeout, so a database outage does not make everyone look lost.
3. A lost agent that heartbeats again is live again; it takes back the items that were
   FAILED because it was lost and that nobody adopted (CLAIMED again, failure cleared),
   since its jobs kept running. A report of a job's real end (finish or failure) for an
   item FAILED only because its agent was lost replaces that verdict.
4. `adopt_run_queue_item(item, run, agent)` (a restarted agent re-attaching a run that
   survived it, e.g. a container) succeeds only when the run id matches and the item is
   - CLAIMED by this same agent (idempotent), or
   - CLAIMED by an agent that is not alive: lost, stopped (KILLED), unknown, or silent
     for longer than its `agent_timeout` even if nobody marked it yet, or
   - FAILED because its agent was lost.
   It is refused for an item held by a live agent and for any other ended item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from agent_lib.backends.sql_schema import agents, items
from agent_lib.states import AgentStatus, ItemState, Phase

log = logging.getLogger(__name__)

DEFAULT_AGENT_TIMEOUT = 30.0


@dataclass
class LostAgent:
    id: str
    name: str
    silent_for: float
    requeued: int
    failed: int


def agent_timeout(config: Any, default: float = DEFAULT_AGENT_TIMEOUT) -> float:
    """The timeout an agent declared in its registered config (or the default)."""
    value = config.get("agent_timeout") if isinstance(config, dict) else None
    return float(value) if isinstance(value, int | float) and value > 0 else default


def lost_message(name: str, hostname: str, silent_for: float, timeout: float) -> str:
    return (
        f"the agent {name} on {hostname or 'an unknown host'} was lost: no heartbeat for "
        f"{silent_for:.1f}s (its agent_timeout is {timeout:g}s). Its job may still be "
        "running; an agent that re-attaches the run takes the item back, otherwise push it "
        "again"
    )


def reap(
    conn: Connection, now: float, healthy_for: float, default_timeout: float
) -> list[LostAgent]:
    """Mark silent agents lost and settle their items (rule 2). Returns who was marked."""
    candidates = conn.execute(
        select(agents.c.id, agents.c.heartbeat_at, agents.c.config).where(
            agents.c.lost_at.is_(None)
        )
    ).all()
    due = []
    for row in candidates:
        timeout = agent_timeout(row.config, default_timeout)
        if healthy_for >= timeout and (row.heartbeat_at or 0.0) < now - timeout:
            due.append(row.id)
    if not due:
        return []
    locked = select(agents).where(agents.c.id.in_(due), agents.c.lost_at.is_(None))
    if conn.dialect.name == "postgresql":
        locked = locked.with_for_update(skip_locked=True)
    return [_mark_lost(conn, row, now, default_timeout) for row in conn.execute(locked).all()]


def _mark_lost(conn: Connection, agent: Any, now: float, default_timeout: float) -> LostAgent:
    timeout = agent_timeout(agent.config, default_timeout)
    silent = now - (agent.heartbeat_at or agent.created_at)
    conn.execute(update(agents).where(agents.c.id == agent.id).values(lost_at=now))
    requeued = conn.execute(
        update(items)
        .where(items.c.agent_id == agent.id, items.c.state == ItemState.LEASED.value)
        .values(state=ItemState.PENDING.value, agent_id=None, updated_at=now)
    ).rowcount
    failed = conn.execute(
        update(items)
        .where(items.c.agent_id == agent.id, items.c.state == ItemState.CLAIMED.value)
        .values(
            state=ItemState.FAILED.value,
            failure_phase=Phase.AGENT.value,
            failure_message=lost_message(agent.name, agent.hostname, silent, timeout),
            lost_at=now,
            finished_at=now,
            updated_at=now,
        )
    ).rowcount
    if requeued or failed or agent.status != AgentStatus.KILLED.value:
        log.warning(
            "agent %s is lost (no heartbeat for %.1fs): %d leased item(s) back to their "
            "queue, %d running item(s) marked FAILED (phase agent)",
            agent.name,
            silent,
            requeued,
            failed,
        )
    return LostAgent(agent.id, agent.name, silent, int(requeued), int(failed))


def heartbeat(conn: Connection, agent_id: str, now: float) -> int:
    """Record a heartbeat; an agent that was lost comes back (rule 3). Returns items retaken."""
    live = conn.execute(
        update(agents)
        .where(agents.c.id == agent_id, agents.c.lost_at.is_(None))
        .values(heartbeat_at=now)
    )
    if live.rowcount:
        return 0
    was_lost = conn.execute(
        update(agents).where(agents.c.id == agent_id).values(heartbeat_at=now, lost_at=None)
    )
    if not was_lost.rowcount:
        return 0
    retaken = conn.execute(
        update(items)
        .where(
            items.c.agent_id == agent_id,
            items.c.state == ItemState.FAILED.value,
            items.c.lost_at.is_not(None),
        )
        .values(**_reclaimed(now))
    ).rowcount
    log.warning(
        "this agent had been marked lost and is back; took back %d running item(s)", retaken
    )
    return int(retaken)


def adopt(
    conn: Connection, item_id: int, run_id: str, agent_id: str, now: float, default_timeout: float
) -> bool:
    """Rule 4: may `agent_id` take over the item of run `run_id`? If so, it now holds it."""
    stmt = select(items.c.state, items.c.agent_id, items.c.lost_at, items.c.run_id).where(
        items.c.id == item_id
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None or row.run_id != run_id:
        return False
    if row.state == ItemState.CLAIMED.value:
        if row.agent_id != agent_id and holder_alive(conn, row.agent_id, now, default_timeout):
            return False
    elif not (row.state == ItemState.FAILED.value and row.lost_at is not None):
        return False
    conn.execute(
        update(items).where(items.c.id == item_id).values(agent_id=agent_id, **_reclaimed(now))
    )
    return True


def holder_alive(
    conn: Connection, agent_id: str | None, now: float, default_timeout: float
) -> bool:
    """Whether the agent holding an item is alive by rule 2 (marked or not)."""
    if agent_id is None:
        return False
    row = conn.execute(
        select(agents.c.status, agents.c.heartbeat_at, agents.c.lost_at, agents.c.config).where(
            agents.c.id == agent_id
        )
    ).first()
    if row is None or row.lost_at is not None or row.status == AgentStatus.KILLED.value:
        return False
    timeout = agent_timeout(row.config, default_timeout)
    return (row.heartbeat_at or 0.0) >= now - timeout


def _reclaimed(now: float) -> dict[str, Any]:
    """The values that make an item CLAIMED again after a lost-agent verdict."""
    return {
        "state": ItemState.CLAIMED.value,
        "failure_phase": None,
        "failure_message": None,
        "lost_at": None,
        "finished_at": None,
        "updated_at": now,
    }


def lost_verdict_override() -> Any:
    """Condition for `_finish`: an item FAILED only because its agent was lost."""
    return (items.c.state == ItemState.FAILED.value) & items.c.lost_at.is_not(None)
