"""Versioned schema migrations for the SQL backend, in code (no Alembic environment).

Why not Alembic: the schema is a handful of tables, every agent process upgrades on
start, and the upgrade must be atomic and safe when several agents start together. A
list of numbered steps, run in one transaction under a lock, does that with no config
file, no `env.py` and no second version table.

Rules:
- `launch_meta.schema_version` holds the version; no `launch_meta` table means version 0.
- Each step moves the schema from `version - 1` to `version`; steps never change once
  released (version 1 keeps its own frozen copy of the tables), so an old database is
  upgraded by replaying exactly the steps it missed, and queued items are kept.
- All steps of one upgrade run in one transaction: PostgreSQL takes an advisory lock and
  has transactional DDL; SQLite takes its write lock (BEGIN IMMEDIATE). A concurrent agent
  waits, then finds the work done.
- A database newer than this code raises SchemaVersionError: never guess at a future
  schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

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
    inspect,
    select,
    text,
    update,
)

from agent_lib.backends.sql_schema import SCHEMA_VERSION, meta
from agent_lib.errors import SchemaVersionError

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every agent (pg_advisory_xact_lock).
PG_MIGRATION_LOCK = 0x1A0C_4A6E


@dataclass(frozen=True)
class Step:
    version: int
    summary: str
    apply: Callable[[Connection], None]


def _v1_tables() -> MetaData:
    """The schema as version 1 shipped it. Frozen: never edit, add a step instead."""
    md = MetaData()
    Table(
        "launch_meta",
        md,
        Column("key", String(64), primary_key=True),
        Column("value", String(256), nullable=False),
    )
    Table(
        "launch_agents",
        md,
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
    )
    Table(
        "launch_queues",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(128), nullable=False, unique=True),
        Column("created_at", Float, nullable=False),
    )
    Table(
        "launch_items",
        md,
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
        Index("ix_launch_items_pop", "queue_id", "state", "priority", "id"),
        Index("ix_launch_items_state", "state"),
        Index("ix_launch_items_run_id", "run_id"),
    )
    Table(
        "launch_sweeps",
        md,
        Column("id", String(128), primary_key=True),
        Column("state", String(32), nullable=False),
        Column("updated_at", Float, nullable=False),
    )
    return md


def _create_v1(conn: Connection) -> None:
    _v1_tables().create_all(conn, checkfirst=True)


def _add_liveness(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE launch_agents ADD COLUMN lost_at FLOAT"))
    conn.execute(text("ALTER TABLE launch_items ADD COLUMN lost_at FLOAT"))
    conn.execute(text("CREATE INDEX ix_launch_items_agent ON launch_items (agent_id, state)"))


def _add_generations(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE launch_agents ADD COLUMN generation INTEGER NOT NULL DEFAULT 0"))
    conn.execute(text("ALTER TABLE launch_items ADD COLUMN agent_generation INTEGER"))


def _add_stop_requests(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE launch_items ADD COLUMN stop_requested_by VARCHAR(256)"))
    conn.execute(text("ALTER TABLE launch_items ADD COLUMN stop_requested_at FLOAT"))


def _add_sweeps(conn: Connection) -> None:
    for column, kind in (
        ("name", "VARCHAR(128)"),
        ("config", "JSON"),
        ("settings", "JSON"),
        ("queue", "VARCHAR(128)"),
        ("created_at", "FLOAT"),
        ("scheduler_item_id", "VARCHAR(64)"),
        ("message", "TEXT"),
    ):
        conn.execute(text(f"ALTER TABLE launch_sweeps ADD COLUMN {column} {kind}"))
    md = MetaData()  # frozen as version 5 shipped it
    Table(
        "launch_sweep_runs",
        md,
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
    md.create_all(conn)


STEPS: tuple[Step, ...] = (
    Step(1, "queues, items, agents, sweeps", _create_v1),
    Step(
        2, "agent liveness: agents.lost_at, items.lost_at, index on items.agent_id", _add_liveness
    ),
    Step(3, "stable agents: agents.generation, items.agent_generation", _add_generations),
    Step(4, "who asked to stop: items.stop_requested_by, stop_requested_at", _add_stop_requests),
    Step(5, "sweeps on our own queues: sweeps.config/settings/..., sweep_runs", _add_sweeps),
)
assert [s.version for s in STEPS] == list(range(1, SCHEMA_VERSION + 1)), "one step per version"


def current_version(conn: Connection) -> int:
    """The schema version of the database (0: empty)."""
    if not inspect(conn).has_table(meta.name):
        return 0
    value = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 0


def upgrade(conn: Connection, where: str, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema to `target` inside the caller's transaction; returns the old version.

    `where` names the database (password hidden) for messages.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(select(text(f"pg_advisory_xact_lock({PG_MIGRATION_LOCK})")))
    found = current_version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the queue database at {where} has schema version {found}, newer than this "
            f"agent knows (version {SCHEMA_VERSION}): upgrade the agent "
            "(pip install -U prefect-launch-agent) on this machine, or point it at another "
            "database. Nothing was changed."
        )
    for step in STEPS:
        if found < step.version <= target:
            log.info("queue database %s: schema v%d: %s", where, step.version, step.summary)
            step.apply(conn)
            _set_version(conn, step.version)
    return found


def _set_version(conn: Connection, version: int) -> None:
    # Safe without an upsert: the caller holds the migration lock.
    done = conn.execute(
        update(meta).where(meta.c.key == "schema_version").values(value=str(version))
    )
    if done.rowcount == 0:
        conn.execute(meta.insert().values(key="schema_version", value=str(version)))
