"""Tables of the SQL backend, as the current schema version has them.

Queries use these. A fresh database is not created from them but by the migrations in
`agent_lib.backends.migrations`, which replay every version's change in order, so a new
database and an upgraded one end up identical. Change a table here only together with a
new migration step (and bump SCHEMA_VERSION).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
)

SCHEMA_VERSION = 5

metadata = MetaData()

meta = Table(
    "launch_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

agents = Table(
    "launch_agents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("hostname", String(255), nullable=False, default=""),
    Column("entity", String(128)),
    Column("project", String(128)),
    Column("queues", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("stop_polling", Boolean, nullable=False, default=False),
    Column("config", JSON),
    Column("version", String(64)),
    Column("created_at", Float, nullable=False),
    Column("heartbeat_at", Float),
    # v2: set when another agent found this one's heartbeat too old (see sql_liveness).
    Column("lost_at", Float),
    # v3: grows by one at each start of the same agent (its name); fences its writes.
    Column("generation", Integer, nullable=False, default=0),
)

queues = Table(
    "launch_queues",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

items = Table(
    "launch_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("queue_id", Integer, ForeignKey("launch_queues.id"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False, default=2),
    Column("run_spec", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("leased_at", Float),
    Column("lease_expires_at", Float),
    Column("claimed_at", Float),
    Column("finished_at", Float),
    Column("agent_id", String(64)),
    Column("run_id", String(128)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("exit_code", Integer),
    Column("failure_message", Text),
    Column("failure_phase", String(16)),
    Column("files", JSON),
    Column("warnings", JSON),
    Column("stop_requested", Boolean, nullable=False, default=False),
    # v2: set when the item was FAILED because its agent was lost (adopt may undo that).
    Column("lost_at", Float),
    # v3: the generation of the agent that leased the item; writes must carry it.
    Column("agent_generation", Integer),
    # v4: who asked a running item to stop, and when (shown with its STOPPED state).
    Column("stop_requested_by", String(256)),
    Column("stop_requested_at", Float),
    Index("ix_launch_items_pop", "queue_id", "state", "priority", "id"),
    Index("ix_launch_items_state", "state"),
    Index("ix_launch_items_run_id", "run_id"),
    Index("ix_launch_items_agent", "agent_id", "state"),
)

sweeps = Table(
    "launch_sweeps",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("state", String(32), nullable=False),
    Column("updated_at", Float, nullable=False),
    # v5: sweeps on our own queues (agent_lib.sweeps): the W&B sweep config as given, what
    # the scheduler needs (queue, run template, seed, ...), and the scheduler item that
    # owns the sweep now (a scheduler pushes runs only while it is that item).
    Column("name", String(128)),
    Column("config", JSON),
    Column("settings", JSON),
    Column("queue", String(128)),
    Column("created_at", Float),
    Column("scheduler_item_id", String(64)),
    Column("message", Text),
)

# v5: one row per run a sweep's scheduler asked for (an Optuna trial), written in the same
# transaction as the push of its run item, so a restarted scheduler rebuilds its search from
# here and never asks for the same parameters again.
sweep_runs = Table(
    "launch_sweep_runs",
    metadata,
    Column("sweep_id", String(128), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("item_id", String(64), nullable=False),
    Column("run_id", String(128), nullable=False),
    Column("params", JSON, nullable=False),
    Column("system_attrs", JSON),
    Column("state", String(16), nullable=False),
    Column("value", Float),
    Column("intermediate", JSON),
    Column("message", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_launch_sweep_runs_item", "item_id"),
)


def insert_item(
    conn: Connection, queue_id: int, run_spec: dict[str, Any], priority: int, now: float
) -> str:
    """Add a PENDING item (a push, or a resume of a preempted one); returns its id."""
    item_id = conn.execute(
        insert(items)
        .values(
            queue_id=queue_id,
            state="PENDING",
            priority=priority,
            run_spec=run_spec,
            created_at=now,
            updated_at=now,
            attempts=0,
            stop_requested=False,
        )
        .returning(items.c.id)
    ).scalar_one()
    return str(item_id)
