"""Agent liveness in the SQL backend: who is lost, what happens to their items.

The rules (they hold on SQLite and PostgreSQL alike):

1. An agent is a stable identity (its name: host + data dir, or `--name`). Each start
   registers it again with a generation one higher; every write about an item it holds
   carries the generation it leased the item with, so an older incarnation that is still
   alive somewhere can no longer change the item (the fence).
2. At its start an agent reclaims its own items (`reclaim_items`): those it had only
   LEASED (never launched) go back to PENDING at once; those it had CLAIMED are its new
   generation's, to be re-attached (the job outlived the agent) or launched (it never
   started).
3. Every agent heartbeats (`heartbeat_interval`) and declares its `agent_timeout` when it
   registers (default 30 s). An agent silent for longer is LOST, and any live agent that
   finds it marks it (`lost_at`) and, in the same transaction:
   - its LEASED items go back to PENDING at once, to be popped by anyone;
   - its CLAIMED items (their jobs may still run on its host) follow its `on_agent_lost`:
     `fail` (default) ends them FAILED, phase `agent`, saying the agent was lost, and
     remembers it (`items.lost_at`); `requeue` ends them PREEMPTED and pushes each again
     to resume as the same run (`_resume_count` + 1), up to its `max_resume_count`,
     after which they are FAILED as above. A requeued item remembers it too, until the
     agent, if it comes back, has stopped its own copy of the job (`taken_items`).
   An agent judges others only after the database has answered it without a break for
   their whole timeout, so a database outage does not make everyone look lost.
4. A lost agent that comes back (heartbeats or restarts) takes back the items that were
   FAILED because it was lost: its jobs may have kept running. A report of a job's real
   end for such an item replaces the lost verdict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from agent_lib.backends.sql_schema import agents, insert_item, items
from agent_lib.spec import resume_spec
from agent_lib.states import AgentStatus, ItemState, Phase

log = logging.getLogger(__name__)

DEFAULT_AGENT_TIMEOUT = 30.0
DEFAULT_MAX_RESUME_COUNT = 5


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


def resume_limit(config: Any) -> int | None:
    """How often a lost agent's items may be requeued (None: its policy is `fail`)."""
    if not isinstance(config, dict) or config.get("on_agent_lost") != "requeue":
        return None
    value = config.get("max_resume_count")
    return value if isinstance(value, int) and value >= 0 else DEFAULT_MAX_RESUME_COUNT


def lost_message(name: str, hostname: str, silent_for: float, timeout: float) -> str:
    return (
        f"the agent {name} on {hostname or 'an unknown host'} was lost: no heartbeat for "
        f"{silent_for:.1f}s (its agent_timeout is {timeout:g}s). Its job may still be "
        "running: if the agent restarts on that host (same data dir or --name), it takes "
        "the item back with the job's real outcome; otherwise push it again"
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
    message = lost_message(agent.name, agent.hostname, silent, timeout)
    resumed = _requeue_claimed(conn, agent, message, now)
    failed = conn.execute(
        update(items)
        .where(items.c.agent_id == agent.id, items.c.state == ItemState.CLAIMED.value)
        .values(
            state=ItemState.FAILED.value,
            failure_phase=Phase.AGENT.value,
            failure_message=message,
            lost_at=now,
            finished_at=now,
            updated_at=now,
        )
    ).rowcount
    if requeued or failed or resumed or agent.status != AgentStatus.KILLED.value:
        log.warning(
            "agent %s is lost (no heartbeat for %.1fs): %d leased item(s) back to their "
            "queue, %d running item(s) requeued to resume, %d marked FAILED (phase agent)",
            agent.name,
            silent,
            requeued,
            resumed,
            failed,
        )
    return LostAgent(agent.id, agent.name, silent, int(requeued + resumed), int(failed))


def _requeue_claimed(conn: Connection, agent: Any, message: str, now: float) -> int:
    """`on_agent_lost: requeue`: end each CLAIMED item PREEMPTED and push its resume.

    Items already resumed `max_resume_count` times are left for the caller to fail."""
    limit = resume_limit(agent.config)
    if limit is None:
        return 0
    rows = conn.execute(
        select(
            items.c.id, items.c.queue_id, items.c.priority, items.c.run_spec, items.c.run_id
        ).where(items.c.agent_id == agent.id, items.c.state == ItemState.CLAIMED.value)
    ).all()
    count = 0
    for row in rows:
        spec = row.run_spec if isinstance(row.run_spec, dict) else {}
        done = spec.get("_resume_count", 0)
        if isinstance(done, int) and done >= limit:
            continue
        new_id = insert_item(conn, row.queue_id, resume_spec(spec, row.run_id), row.priority, now)
        conn.execute(
            update(items)
            .where(items.c.id == row.id)
            .values(
                state=ItemState.PREEMPTED.value,
                failure_phase=Phase.AGENT.value,
                failure_message=f"{message}; requeued as item {new_id} to resume run {row.run_id}",
                lost_at=now,  # until the agent, if it comes back, has stopped its copy
                finished_at=now,
                updated_at=now,
            )
        )
        count += 1
    return count


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
