"""The SQL backend: run queues in a database (SQLite embedded, PostgreSQL shared).

Pops are one transaction: SQLite serialises writers (BEGIN IMMEDIATE), PostgreSQL uses
`FOR UPDATE SKIP LOCKED`; either way no two agents lease the same item. An ack only
succeeds for the agent that holds the lease, so an item whose lease expired and went to
another agent is never launched twice.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, insert, or_, select, update
from sqlalchemy.engine import make_url

from agent_lib.backends.base import AgentRecord, ItemInfo, QueueSummary
from agent_lib.backends.sql_schema import (
    SCHEMA_VERSION,
    agents,
    items,
    meta,
    metadata,
    queues,
    sweeps,
)
from agent_lib.errors import BackendError, SchemaVersionError
from agent_lib.spec import QueueItem
from agent_lib.states import AgentStatus, ItemState, Phase

log = logging.getLogger(__name__)

DEFAULT_PRIORITY = 2
MAX_STORED_FILE_BYTES = 64 * 1024
ACTIVE_STATES = (ItemState.PENDING, ItemState.LEASED, ItemState.CLAIMED)


class SqlBackend:
    """Run queues in a SQL database, through SQLAlchemy. See the module docstring."""

    def __init__(self, url: str, lease_seconds: float = 60.0) -> None:
        self.url = url
        self.lease_seconds = lease_seconds
        self._engine = _make_engine(url)
        self._reader = self._engine.execution_options(readonly=True)
        self._leases: dict[str, tuple[str, int]] = {}
        self._ensure_schema()

    # -- plumbing --
    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._reader.connect() as conn:
            yield conn

    def _ensure_schema(self) -> None:
        with self._tx() as conn:
            metadata.create_all(conn)
            row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
            if row is None:
                conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif int(row.value) > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"the queue database at {self.display_url} has schema version {row.value}, "
                    f"newer than this agent knows ({SCHEMA_VERSION}): upgrade the agent"
                )

    @property
    def display_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self._engine.dispose()

    def _queue_id(self, conn: Connection, name: str, create: bool) -> int | None:
        qid = conn.execute(select(queues.c.id).where(queues.c.name == name)).scalar()
        if qid is None and create:
            qid = conn.execute(
                insert(queues).values(name=name, created_at=time.time()).returning(queues.c.id)
            ).scalar_one()
        return qid

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
        agent_id = uuid.uuid4().hex
        now = time.time()
        with self._tx() as conn:
            for name in queues:
                self._queue_id(conn, name, create=True)
            conn.execute(
                insert(agents).values(
                    id=agent_id,
                    name=f"{hostname or socket.gethostname()}-{agent_id[:6]}",
                    hostname=hostname,
                    entity=entity,
                    project=project,
                    queues=list(queues),
                    status=AgentStatus.POLLING.value,
                    stop_polling=False,
                    config=agent_config,
                    version=version,
                    created_at=now,
                    heartbeat_at=now,
                )
            )
        return agent_id

    def get_launch_agent(self, agent_id: str) -> AgentRecord:
        with self._read() as conn:
            row = conn.execute(select(agents).where(agents.c.id == agent_id)).first()
        if row is None:
            raise BackendError(f"no agent with id {agent_id}")
        return AgentRecord(
            id=row.id,
            name=row.name,
            status=row.status,
            stop_polling=bool(row.stop_polling),
            hostname=row.hostname,
            queues=list(row.queues),
            heartbeat_at=row.heartbeat_at,
        )

    def update_launch_agent_status(self, agent_id: str, status: AgentStatus) -> bool:
        with self._tx() as conn:
            result = conn.execute(
                update(agents)
                .where(agents.c.id == agent_id)
                .values(status=status.value, heartbeat_at=time.time())
            )
        return result.rowcount == 1

    def heartbeat(self, agent_id: str) -> None:
        with self._tx() as conn:
            conn.execute(
                update(agents).where(agents.c.id == agent_id).values(heartbeat_at=time.time())
            )

    def list_agents(self) -> list[AgentRecord]:
        with self._read() as conn:
            rows = conn.execute(select(agents).order_by(agents.c.created_at)).all()
        return [
            AgentRecord(
                id=r.id,
                name=r.name,
                status=r.status,
                stop_polling=bool(r.stop_polling),
                hostname=r.hostname,
                queues=list(r.queues),
                heartbeat_at=r.heartbeat_at,
            )
            for r in rows
        ]

    def stop_agent(self, agent_id: str) -> bool:
        """Set `stopPolling` on an agent's record: it stops cleanly at its next look."""
        with self._tx() as conn:
            result = conn.execute(
                update(agents)
                .where(or_(agents.c.id == agent_id, agents.c.name == agent_id))
                .values(stop_polling=True)
            )
        return result.rowcount > 0

    # -- the queue --
    def create_queue(self, name: str) -> None:
        with self._tx() as conn:
            self._queue_id(conn, name, create=True)

    def pop_from_run_queue(
        self, queue: str, entity: str | None, project: str, agent_id: str
    ) -> QueueItem | None:
        now = time.time()
        if not self._may_have_work(queue, now):
            return None
        with self._tx() as conn:
            qid = self._queue_id(conn, queue, create=False)
            if qid is None:
                return None
            self._requeue_expired_leases(conn, now, qid)
            row = conn.execute(
                select(items.c.id, items.c.run_spec, items.c.priority, items.c.attempts)
                .where(items.c.queue_id == qid, items.c.state == ItemState.PENDING.value)
                .order_by(items.c.priority, items.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            attempt = row.attempts + 1
            conn.execute(
                update(items)
                .where(items.c.id == row.id)
                .values(
                    state=ItemState.LEASED.value,
                    agent_id=agent_id,
                    leased_at=now,
                    lease_expires_at=now + self.lease_seconds,
                    attempts=attempt,
                    updated_at=now,
                )
            )
        item_id = str(row.id)
        self._leases[item_id] = (agent_id, attempt)
        return QueueItem(
            id=item_id, queue=queue, run_spec=row.run_spec, priority=row.priority, attempt=attempt
        )

    def _may_have_work(self, queue: str, now: float) -> bool:
        """A lock-free look first, so idle polling never takes the write lock."""
        with self._read() as conn:
            hit = conn.execute(
                select(items.c.id)
                .join(queues, queues.c.id == items.c.queue_id)
                .where(
                    queues.c.name == queue,
                    or_(
                        items.c.state == ItemState.PENDING.value,
                        (items.c.state == ItemState.LEASED.value)
                        & (items.c.lease_expires_at < now),
                    ),
                )
                .limit(1)
            ).first()
        return hit is not None

    def _requeue_expired_leases(self, conn: Connection, now: float, qid: int | None) -> int:
        stmt = update(items).where(
            items.c.state == ItemState.LEASED.value, items.c.lease_expires_at < now
        )
        if qid is not None:
            stmt = stmt.where(items.c.queue_id == qid)
        result = conn.execute(
            stmt.values(state=ItemState.PENDING.value, agent_id=None, updated_at=now)
        )
        if result.rowcount:
            log.info("returned %d item(s) with an expired lease to their queue", result.rowcount)
        return int(result.rowcount)

    def requeue_expired_leases(self) -> int:
        """Return every item whose lease ran out to PENDING; returns how many."""
        with self._tx() as conn:
            return self._requeue_expired_leases(conn, time.time(), None)

    def ack_run_queue_item(self, item_id: str, run_id: str) -> bool:
        lease = self._leases.pop(item_id, None)
        stmt = update(items).where(
            items.c.id == int(item_id), items.c.state == ItemState.LEASED.value
        )
        if lease is not None:
            agent_id, attempt = lease
            stmt = stmt.where(items.c.agent_id == agent_id, items.c.attempts == attempt)
        now = time.time()
        with self._tx() as conn:
            result = conn.execute(
                stmt.values(
                    state=ItemState.CLAIMED.value, run_id=run_id, claimed_at=now, updated_at=now
                )
            )
        return result.rowcount == 1

    def adopt_run_queue_item(self, item_id: str, run_id: str, agent_id: str) -> bool:
        with self._tx() as conn:
            result = conn.execute(
                update(items)
                .where(
                    items.c.id == int(item_id),
                    items.c.run_id == run_id,
                    items.c.state == ItemState.CLAIMED.value,
                )
                .values(agent_id=agent_id, updated_at=time.time())
            )
        return result.rowcount == 1

    def release_run_queue_item(self, item_id: str) -> None:
        self._leases.pop(item_id, None)
        with self._tx() as conn:
            conn.execute(
                update(items)
                .where(items.c.id == int(item_id), items.c.state == ItemState.LEASED.value)
                .values(state=ItemState.PENDING.value, agent_id=None, updated_at=time.time())
            )

    def fail_run_queue_item(
        self, item_id: str, message: str, phase: Phase, files: list[str] | None = None
    ) -> bool:
        self._leases.pop(item_id, None)
        return self._finish(
            item_id,
            ItemState.FAILED,
            failure_message=message,
            failure_phase=str(phase),
            files=_read_files(files or []),
        )

    def complete_run_queue_item(
        self, item_id: str, state: ItemState, exit_code: int | None = None
    ) -> None:
        self._finish(item_id, state, exit_code=exit_code)

    def _finish(self, item_id: str, state: ItemState, **values: Any) -> bool:
        now = time.time()
        with self._tx() as conn:
            result = conn.execute(
                update(items)
                .where(
                    items.c.id == int(item_id),
                    items.c.state.in_([s.value for s in ACTIVE_STATES]),
                )
                .values(state=state.value, finished_at=now, updated_at=now, **values)
            )
        return result.rowcount == 1

    def update_run_queue_item_warning(
        self, item_id: str, message: str, phase: str, files: list[str] | None = None
    ) -> bool:
        with self._tx() as conn:
            current = conn.execute(
                select(items.c.warnings).where(items.c.id == int(item_id))
            ).scalar()
            warnings = [*(current or []), {"message": message, "stage": phase, "at": time.time()}]
            result = conn.execute(
                update(items).where(items.c.id == int(item_id)).values(warnings=warnings)
            )
        return result.rowcount == 1

    def push_to_run_queue(
        self,
        queue: str,
        run_spec: dict[str, Any],
        priority: int | None = None,
        entity: str | None = None,
        project: str | None = None,
    ) -> str:
        now = time.time()
        with self._tx() as conn:
            qid = self._queue_id(conn, queue, create=True)
            item_id = conn.execute(
                insert(items)
                .values(
                    queue_id=qid,
                    state=ItemState.PENDING.value,
                    priority=DEFAULT_PRIORITY if priority is None else priority,
                    run_spec=run_spec,
                    created_at=now,
                    updated_at=now,
                    attempts=0,
                    stop_requested=False,
                )
                .returning(items.c.id)
            ).scalar_one()
        return str(item_id)

    def cancel_run_queue_item(self, item_id: str) -> ItemState | None:
        """Stop an item: a queued one ends STOPPED now; a running one is asked to stop.

        Returns the item's state after the call, or None if there is no such item.
        """
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(select(items.c.state).where(items.c.id == int(item_id))).first()
            if row is None:
                return None
            state = ItemState(row.state)
            if state in (ItemState.PENDING, ItemState.LEASED):
                conn.execute(
                    update(items)
                    .where(items.c.id == int(item_id))
                    .values(state=ItemState.STOPPED.value, finished_at=now, updated_at=now)
                )
                return ItemState.STOPPED
            if state is ItemState.CLAIMED:
                conn.execute(
                    update(items)
                    .where(items.c.id == int(item_id))
                    .values(stop_requested=True, updated_at=now)
                )
            return state

    # -- runs and sweeps --
    def run_should_stop(self, entity: str | None, project: str | None, run_id: str) -> bool:
        with self._read() as conn:
            hit = conn.execute(
                select(items.c.id).where(
                    items.c.run_id == run_id,
                    items.c.state == ItemState.CLAIMED.value,
                    items.c.stop_requested.is_(True),
                )
            ).first()
        return hit is not None

    def get_sweep_state(self, sweep_id: str, entity: str | None, project: str | None) -> str | None:
        with self._read() as conn:
            state = conn.execute(select(sweeps.c.state).where(sweeps.c.id == sweep_id)).scalar()
        return str(state) if state is not None else None

    def set_sweep_state(
        self, sweep_id: str, state: str, entity: str | None, project: str | None
    ) -> None:
        now = time.time()
        with self._tx() as conn:
            result = conn.execute(
                update(sweeps).where(sweeps.c.id == sweep_id).values(state=state, updated_at=now)
            )
            if result.rowcount == 0:
                conn.execute(insert(sweeps).values(id=sweep_id, state=state, updated_at=now))

    def wait_for_items(self, queues: list[str], timeout: float) -> bool:
        return False

    # -- reading, for the CLI and tests --
    def list_queues(self) -> list[QueueSummary]:
        with self._read() as conn:
            names = conn.execute(select(queues.c.id, queues.c.name).order_by(queues.c.name)).all()
            counts = conn.execute(
                select(items.c.queue_id, items.c.state, func.count()).group_by(
                    items.c.queue_id, items.c.state
                )
            ).all()
        by_queue: dict[int, dict[str, int]] = {qid: {} for qid, _ in names}
        for qid, state, count in counts:
            by_queue.setdefault(qid, {})[state] = int(count)
        return [QueueSummary(name=name, counts=by_queue[qid]) for qid, name in names]

    def list_items(
        self, queue: str | None = None, states: list[ItemState] | None = None, limit: int = 50
    ) -> list[ItemInfo]:
        stmt = _item_select()
        if queue is not None:
            stmt = stmt.where(queues.c.name == queue)
        if states:
            stmt = stmt.where(items.c.state.in_([s.value for s in states]))
        stmt = stmt.order_by(items.c.id.desc()).limit(limit)
        with self._read() as conn:
            return [_item_info(row) for row in conn.execute(stmt).all()]

    def get_item(self, item_id: str) -> ItemInfo | None:
        try:
            key = int(item_id)
        except ValueError:
            return None
        with self._read() as conn:
            row = conn.execute(_item_select().where(items.c.id == key)).first()
        return _item_info(row) if row is not None else None


def _item_select() -> Any:
    return select(items, queues.c.name.label("queue_name")).join(
        queues, queues.c.id == items.c.queue_id
    )


def _item_info(row: Any) -> ItemInfo:
    return ItemInfo(
        id=str(row.id),
        queue=row.queue_name,
        state=ItemState(row.state),
        priority=row.priority,
        run_spec=row.run_spec,
        created_at=row.created_at,
        updated_at=row.updated_at,
        run_id=row.run_id,
        agent_id=row.agent_id,
        attempts=row.attempts,
        exit_code=row.exit_code,
        failure_message=row.failure_message,
        failure_phase=row.failure_phase,
        files=dict(row.files or {}),
        warnings=list(row.warnings or []),
        stop_requested=bool(row.stop_requested),
        leased_at=row.leased_at,
        claimed_at=row.claimed_at,
        finished_at=row.finished_at,
    )


def _read_files(paths: list[str]) -> dict[str, str]:
    """Keep the tail of each failure file in the database, so any machine can show it."""
    stored: dict[str, str] = {}
    for path in paths:
        try:
            data = Path(path).read_bytes()[-MAX_STORED_FILE_BYTES:]
        except OSError as exc:
            stored[path] = f"<could not read {path}: {exc}>"
            continue
        stored[path] = data.decode("utf-8", errors="replace")
    return stored


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the lock up front, so two agents never read the same PENDING row
        # and both try to lease it; readers stay lock-free under WAL.
        readonly = conn.get_execution_options().get("readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine
