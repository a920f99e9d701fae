"""The SQL backend: run queues in a database (SQLite embedded, PostgreSQL shared).

Pops are one transaction: SQLite serialises writers (BEGIN IMMEDIATE), PostgreSQL uses
`FOR UPDATE SKIP LOCKED`; either way no two agents lease the same item. An ack only
succeeds for the agent that holds the lease, so an item whose lease expired and went to
another agent is never launched twice.

On PostgreSQL a push also sends NOTIFY, and `wait_for_items` LISTENs (pg_notify), so an
idle agent starts an item within milliseconds. Every operation rides out a database
outage (db_retry). Liveness rules (lost agents, reclaim) are in sql_liveness; the schema is
created and upgraded by migrations.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Text,
    cast,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url

from agent_lib.backends import migrations, sql_liveness, sql_statements, sql_sweeps
from agent_lib.backends.base import AgentRecord, ItemInfo, Lease, QueueSummary, StopRequest
from agent_lib.backends.db_retry import Reconnector
from agent_lib.backends.item_keys import item_key
from agent_lib.backends.pg_notify import PgListener, libpq_conninfo, notify_items
from agent_lib.backends.sql_liveness import DEFAULT_AGENT_TIMEOUT, LostAgent
from agent_lib.backends.sql_schema import agents, insert_item, items, queues, sweeps
from agent_lib.backends.sql_statements import held
from agent_lib.backends.sqlite_wake import LocalListener, LocalWaker, wake_dir_for
from agent_lib.errors import BackendError
from agent_lib.spec import QueueItem
from agent_lib.states import AgentStatus, ItemState, Phase

log = logging.getLogger(__name__)

DEFAULT_PRIORITY = 2
MAX_STORED_FILE_BYTES = 64 * 1024
# Unreadable items failed in one pop before it gives up (the next pop goes on).
MAX_UNREADABLE_PER_POP = 100
# While an agent drains a queue, expired leases are looked for at most this often.
RECLAIM_EVERY = 1.0
# Where a SQLite transaction keeps the queues to announce once it commits (conn.info).
_WAKE_KEY = "launch_agent_wake"
P = ParamSpec("P")
R = TypeVar("R")


def _retried(
    method: Callable[Concatenate[SqlBackend, P], R],
) -> Callable[Concatenate[SqlBackend, P], R]:
    """Run the whole operation again (a fresh transaction) while the database is away."""

    def wrapper(self: SqlBackend, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._reconnect.call(method, self, *args, **kwargs)

    functools.update_wrapper(wrapper, method)
    return wrapper


class SqlBackend:
    """Run queues in a SQL database, through SQLAlchemy. See the module docstring.

    `agent_timeout` is the silence after which an agent that did not declare its own
    counts as lost; `retry_window` how long an operation waits out a database outage;
    `listen=False` turns NOTIFY wake-ups off (polling only).
    """

    def __init__(
        self,
        url: str,
        lease_seconds: float = 60.0,
        agent_timeout: float = DEFAULT_AGENT_TIMEOUT,
        retry_window: float = 120.0,
        listen: bool = True,
    ) -> None:
        self.url = url
        self.lease_seconds = lease_seconds
        self.agent_timeout = agent_timeout
        self._engine = _make_engine(url)
        self._reader = self._engine.execution_options(readonly=True)
        self._is_pg = self._engine.dialect.name == "postgresql"
        self._reconnect = Reconnector(self.display_url, self._engine.dialect.name, retry_window)
        self._listener: PgListener | LocalListener | None = None
        wake_dir = None if self._is_pg else wake_dir_for(make_url(url).database)
        self._waker = LocalWaker(wake_dir) if wake_dir is not None else None
        self._busy_queues: set[str] = set()  # queues whose last pop found an item
        self._next_reclaim: dict[str, float] = {}  # when a pop next returns expired leases
        if self._is_pg and listen:
            self._listener = PgListener(libpq_conninfo(make_url(url)), self.display_url)
        elif wake_dir is not None and listen:
            self._listener = LocalListener(wake_dir)
        # The agent runs a wake-up watcher thread only for backends that can announce items.
        self.supports_wakeup = self._listener is not None
        self._ensure_schema()

    # -- plumbing --
    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._engine.begin() as conn:
            try:
                yield conn
            finally:
                woken = self._take_wake(conn)
        if woken and self._waker is not None:  # committed: now agents can see the items
            self._waker.announce(woken)

    def _take_wake(self, conn: Connection) -> set[str] | None:
        """The queues this transaction announces (SQLite only). Never raises: on a dead
        connection `conn.info` does, which would hide the error the Reconnector retries."""
        if self._waker is None:
            return None
        try:
            woken: set[str] | None = conn.info.pop(_WAKE_KEY, None)
        except Exception:
            return None
        return woken

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._reader.connect() as conn:
            yield conn

    @_retried
    def _ensure_schema(self) -> None:
        """Create or upgrade the schema (migrations); refuse a newer one."""
        with self._tx() as conn:
            migrations.upgrade(conn, self.display_url)

    def _notify(self, conn: Connection, queue: str) -> None:
        """Wake the agents of `queue` once this transaction commits ("": all agents)."""
        if self._is_pg:
            notify_items(conn, queue)
        elif self._waker is not None:
            conn.info.setdefault(_WAKE_KEY, set()).add(queue)

    def _notify_all(self, conn: Connection) -> None:
        self._notify(conn, "")

    @property
    def display_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._engine.dispose()

    def _queue_id(self, conn: Connection, name: str, create: bool) -> int | None:
        qid = conn.execute(select(queues.c.id).where(queues.c.name == name)).scalar()
        if qid is None and create:
            qid = conn.execute(
                insert(queues).values(name=name, created_at=time.time()).returning(queues.c.id)
            ).scalar_one()
        return qid

    # -- the agent's own record --
    @_retried
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
        """Register an agent. A `name` is a stable identity: the same name registers the
        same agent again, with its generation one higher (which fences the old one)."""
        agent_id = stable_agent_id(name) if name else uuid.uuid4().hex
        now = time.time()
        record = {
            "hostname": hostname,
            "entity": entity,
            "project": project,
            "queues": list(queues),
            "status": AgentStatus.POLLING.value,
            "stop_polling": False,
            "config": agent_config,
            "version": version,
            "heartbeat_at": now,
        }
        with self._tx() as conn:
            for queue in queues:
                self._queue_id(conn, queue, create=True)
            again = conn.execute(
                update(agents)
                .where(agents.c.id == agent_id)
                .values(generation=agents.c.generation + 1, **record)
            )
            if not again.rowcount:
                conn.execute(
                    insert(agents).values(
                        id=agent_id,
                        name=name or f"{hostname or socket.gethostname()}-{agent_id[:6]}",
                        created_at=now,
                        generation=1,
                        **record,
                    )
                )
        return agent_id

    @_retried
    def get_launch_agent(self, agent_id: str) -> AgentRecord:
        with self._read() as conn:
            row = conn.execute(select(agents).where(agents.c.id == agent_id)).first()
        if row is None:
            raise BackendError(f"no agent with id {agent_id}")
        return _agent_record(row)

    @_retried
    def update_launch_agent_status(self, agent_id: str, status: AgentStatus) -> bool:
        with self._tx() as conn:
            result = conn.execute(
                update(agents)
                .where(agents.c.id == agent_id)
                .values(status=status.value, heartbeat_at=time.time())
            )
        return result.rowcount == 1

    @_retried
    def heartbeat(self, agent_id: str) -> None:
        """Say the agent is alive; an agent that was marked lost comes back (sql_liveness)."""
        with self._tx() as conn:
            sql_liveness.heartbeat(conn, agent_id, time.time())

    @_retried
    def reap_lost_agents(self) -> list[LostAgent]:
        """Mark agents whose heartbeat stopped as lost and settle their items.

        Live agents call this on their heartbeat tick; see sql_liveness for the rules.
        Does nothing until this process has reached the database without a break for
        the agents' timeout, so an outage never makes every agent look lost.
        """
        healthy_for = self._reconnect.healthy_for()
        with self._tx() as conn:
            lost = sql_liveness.reap(conn, time.time(), healthy_for, self.agent_timeout)
            if any(a.requeued for a in lost):
                self._notify_all(conn)
        return lost

    @_retried
    def list_agents(self) -> list[AgentRecord]:
        with self._read() as conn:
            rows = conn.execute(select(agents).order_by(agents.c.created_at)).all()
        return [_agent_record(r) for r in rows]

    @_retried
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
    @_retried
    def create_queue(self, name: str) -> None:
        with self._tx() as conn:
            self._queue_id(conn, name, create=True)

    @_retried
    def pop_from_run_queue(
        self, queue: str, entity: str | None, project: str, agent_id: str, generation: int = 0
    ) -> Lease | None:
        now = time.time()
        # Draining: the last pop found an item, so skip the lock-free look (a round trip).
        if queue not in self._busy_queues and not self._may_have_work(queue, now):
            return None
        self._busy_queues.discard(queue)
        lease_values = {
            "queue": queue,
            "v_agent": agent_id,
            "v_generation": generation,
            "v_now": now,
            "v_expires": now + self.lease_seconds,
        }
        with self._tx() as conn:
            reclaimed = now >= self._next_reclaim.get(queue, 0.0)
            if reclaimed:  # at most once a second while draining, and whenever it runs dry
                self._reclaim_expired(conn, queue, now)
            for _ in range(MAX_UNREADABLE_PER_POP):
                row = conn.execute(sql_statements.LEASE_NEXT, lease_values).first()
                if row is None and not reclaimed:
                    reclaimed = True
                    self._reclaim_expired(conn, queue, now)
                    row = conn.execute(sql_statements.LEASE_NEXT, lease_values).first()
                if row is None:
                    return None
                try:
                    run_spec = decode_run_spec(row.raw_spec)
                except ValueError as exc:
                    _fail_unreadable(conn, row.id, str(exc), now)
                    continue
                self._busy_queues.add(queue)
                item = QueueItem(
                    id=str(row.id),
                    queue=queue,
                    run_spec=run_spec,
                    priority=row.priority,
                    attempt=row.attempts,
                )
                return Lease(item, agent_id, generation, expires_at=now + self.lease_seconds)
        return None

    def _reclaim_expired(self, conn: Connection, queue: str, now: float) -> None:
        self._next_reclaim[queue] = now + RECLAIM_EVERY
        self._requeue_expired_leases(conn, now, None)

    def _may_have_work(self, queue: str, now: float) -> bool:
        """A lock-free look first, so idle polling never takes the write lock."""
        with self._read() as conn:
            hit = conn.execute(sql_statements.MAY_HAVE_WORK, {"queue": queue, "now": now}).first()
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

    @_retried
    def requeue_expired_leases(self) -> int:
        """Return every item whose lease ran out to PENDING; returns how many."""
        with self._tx() as conn:
            return self._requeue_expired_leases(conn, time.time(), None)

    @_retried
    def ack_run_queue_item(self, lease: Lease, run_id: str) -> Lease | None:
        """Claim a leased item. Idempotent for the lease holder: an ack retried after its
        commit was lost with the connection finds its own claim and succeeds again."""
        now = time.time()
        with self._tx() as conn:
            values = {"held_run_id": run_id, "v_run_id": run_id, "v_now": now}
            result = conn.execute(sql_statements.ACK, {**held(lease), **values})
        return lease.claimed(run_id) if result.rowcount == 1 else None

    @_retried
    def reclaim_items(self, agent_id: str, generation: int) -> list[Lease]:
        """A restarted agent's items: leased ones go back to their queues (never launched),
        claimed ones (and those failed only because it was lost) become `generation`'s."""
        now = time.time()
        with self._tx() as conn:
            current = conn.execute(
                select(agents.c.generation).where(agents.c.id == agent_id)
            ).scalar()
            if current is None or generation < current:
                return []  # a newer start of this agent holds its items now
            sql_liveness.heartbeat(conn, agent_id, now)  # rule 4: a lost agent is back
            released = conn.execute(
                update(items)
                .where(
                    items.c.agent_id == agent_id,
                    items.c.state == ItemState.LEASED.value,
                    items.c.agent_generation != generation,
                )
                .values(state=ItemState.PENDING.value, agent_id=None, updated_at=now)
            ).rowcount
            if released:
                log.info("returned %d item(s) this agent had leased to their queue", released)
                self._notify_all(conn)
            conn.execute(
                update(items)
                .where(items.c.agent_id == agent_id, items.c.state == ItemState.CLAIMED.value)
                .values(agent_generation=generation, updated_at=now)
            )
            rows = conn.execute(
                _item_select().where(
                    items.c.agent_id == agent_id, items.c.state == ItemState.CLAIMED.value
                )
            ).all()
        return [_lease_of(row, agent_id, generation) for row in rows]

    @_retried
    def renew_leases(self, leases: list[Lease]) -> int:
        """Extend the leases of items still being prepared (validated, not yet acked), so a
        slow step (a Prefect server that is slow to record a job) never lets one expire
        while its agent lives. Returns how many were renewed."""
        if not leases:
            return 0
        now = time.time()
        renewed = 0
        with self._tx() as conn:
            for lease in leases:
                expires = {"v_expires": now + self.lease_seconds}
                renewed += conn.execute(sql_statements.RENEW, {**held(lease), **expires}).rowcount
        return renewed

    @_retried
    def taken_items(self, agent_id: str) -> list[Lease]:
        """Items requeued elsewhere while this agent was lost, whose jobs it may still run."""
        with self._read() as conn:
            rows = conn.execute(
                _item_select().where(
                    items.c.agent_id == agent_id,
                    items.c.state == ItemState.PREEMPTED.value,
                    items.c.lost_at.is_not(None),
                )
            ).all()
        return [_lease_of(row, agent_id, row.agent_generation or 0) for row in rows]

    @_retried
    def forget_taken_item(self, lease: Lease) -> None:
        """The agent has stopped its copy of a taken item's job: stop listing the item."""
        with self._tx() as conn:
            conn.execute(
                update(items)
                .where(items.c.id == int(lease.item_id), items.c.agent_id == lease.agent_id)
                .values(lost_at=None)
            )

    @_retried
    def release_run_queue_item(self, lease: Lease) -> None:
        with self._tx() as conn:
            released = conn.execute(sql_statements.RELEASE, {**held(lease), "v_now": time.time()})
            if released.rowcount:
                self._notify_all(conn)

    @_retried
    def fail_run_queue_item(
        self,
        lease: Lease,
        message: str,
        phase: Phase,
        files: list[str] | None = None,
        exit_code: int | None = None,
    ) -> bool:
        with self._tx() as conn:
            return self._finish(
                conn,
                lease,
                ItemState.FAILED,
                failure_message=message,
                failure_phase=str(phase),
                files=_read_files(files or []),
                exit_code=exit_code,
            )

    @_retried
    def complete_run_queue_item(
        self, lease: Lease, state: ItemState, exit_code: int | None = None
    ) -> bool:
        with self._tx() as conn:
            return self._finish(conn, lease, state, exit_code=exit_code)

    @_retried
    def requeue_run_queue_item(
        self, lease: Lease, run_spec: dict[str, Any], exit_code: int | None = None
    ) -> str | None:
        try:
            with self._tx() as conn:
                row = conn.execute(
                    select(items.c.queue_id, items.c.priority).where(
                        items.c.id == int(lease.item_id)
                    )
                ).first()
                if row is None:
                    return None
                new_id = insert_item(conn, row.queue_id, run_spec, row.priority, time.time())
                message = f"preempted; requeued as item {new_id} to resume run {lease.run_id}"
                if not self._finish(
                    conn, lease, ItemState.PREEMPTED, exit_code=exit_code, failure_message=message
                ):
                    raise _NotHeld  # rolls the push back with the transaction
                self._notify(conn, lease.queue)
        except _NotHeld:
            return None
        return new_id

    def _finish(self, conn: Connection, lease: Lease, state: ItemState, **values: Any) -> bool:
        """End an item its lease still holds. The real end of a job also replaces a
        lost-agent verdict (sql_liveness rule 3)."""
        now = time.time()
        values = {
            "failure_message": None,
            "failure_phase": None,
            "lost_at": None,
            **values,
            "state": state.value,
            "finished_at": now,
            "updated_at": now,
        }
        statement = sql_statements.finish(tuple(sorted(values)))
        bound = {f"v_{name}": value for name, value in values.items()}
        result = conn.execute(statement, {**held(lease), **bound})
        return result.rowcount == 1

    @_retried
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

    @_retried
    def push_to_run_queue(
        self,
        queue: str,
        run_spec: dict[str, Any],
        priority: int | None = None,
        entity: str | None = None,
        project: str | None = None,
    ) -> str:
        with self._tx() as conn:
            qid = self._queue_id(conn, queue, create=True)
            assert qid is not None
            chosen = DEFAULT_PRIORITY if priority is None else priority
            item_id = insert_item(conn, qid, run_spec, chosen, time.time())
            self._notify(conn, queue)
        return item_id

    @_retried
    def cancel_run_queue_item(
        self, item_id: str, requested_by: str | None = None
    ) -> ItemState | None:
        """Stop an item: a queued one ends STOPPED now; a running one is asked to stop, and
        its agent is woken (NOTIFY on PostgreSQL; SQLite agents look twice a second).

        Returns the item's state after the call, or None if there is no such item.
        """
        now = time.time()
        asked = {"stop_requested_by": requested_by, "stop_requested_at": now}
        key = item_key(item_id)
        if key is None:
            return None
        with self._tx() as conn:
            row = conn.execute(select(items.c.state).where(items.c.id == key)).first()
            if row is None:
                return None
            state = ItemState(row.state)
            if state in (ItemState.PENDING, ItemState.LEASED):
                conn.execute(
                    update(items)
                    .where(items.c.id == int(item_id))
                    .values(state=ItemState.STOPPED.value, finished_at=now, updated_at=now, **asked)
                )
                return ItemState.STOPPED
            if state is ItemState.CLAIMED:
                conn.execute(
                    update(items)
                    .where(items.c.id == key)
                    .values(stop_requested=True, updated_at=now, **asked)
                )
                self._notify_all(conn)
            return state

    @_retried
    def stop_requests(self, agent_id: str) -> list[StopRequest]:
        """The running items of `agent_id` that someone asked to stop."""
        with self._read() as conn:
            rows = conn.execute(
                select(items.c.id, items.c.stop_requested_by, items.c.stop_requested_at).where(
                    items.c.agent_id == agent_id,
                    items.c.state == ItemState.CLAIMED.value,
                    items.c.stop_requested.is_(True),
                )
            ).all()
        return [StopRequest(str(r.id), r.stop_requested_by, r.stop_requested_at) for r in rows]

    # -- runs and sweeps --
    @_retried
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

    @_retried
    def get_sweep_state(self, sweep_id: str, entity: str | None, project: str | None) -> str | None:
        with self._read() as conn:
            state = conn.execute(select(sweeps.c.state).where(sweeps.c.id == sweep_id)).scalar()
        return str(state) if state is not None else None

    @_retried
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

    # -- sweeps on our own queues (agent_lib.sweeps; the rules are in sql_sweeps) --
    @_retried
    def create_sweep(
        self,
        sweep_id: str,
        name: str | None,
        config: dict[str, Any],
        settings: dict[str, Any],
        queue: str,
        scheduler_spec: dict[str, Any],
        priority: int | None = None,
    ) -> str:
        """Store a sweep and push its scheduler item, in one transaction; the item's id."""
        with self._tx() as conn:
            qid = self._queue_id(conn, queue, create=True)
            assert qid is not None
            chosen = DEFAULT_PRIORITY if priority is None else priority
            item_id = sql_sweeps.create_sweep(
                conn, sweep_id, name, config, settings, qid, queue, scheduler_spec, chosen
            )
            self._notify(conn, queue)
        return item_id

    @_retried
    def get_sweep(self, sweep_id: str) -> sql_sweeps.SweepRecord | None:
        with self._read() as conn:
            return sql_sweeps.get_sweep(conn, sweep_id)

    @_retried
    def list_sweeps(self) -> list[sql_sweeps.SweepRecord]:
        with self._read() as conn:
            return sql_sweeps.list_sweeps(conn)

    @_retried
    def sweep_runs(self, sweep_id: str, open_only: bool = False) -> list[sql_sweeps.SweepRunRecord]:
        """The sweep's runs (trials; `open_only`: not ended) with their items' states now."""
        with self._read() as conn:
            return sql_sweeps.sweep_runs_of(conn, sweep_id, open_only)

    @_retried
    def claim_sweep_scheduler(self, sweep_id: str, item_id: str) -> sql_sweeps.SweepRecord | None:
        with self._tx() as conn:
            return sql_sweeps.claim_scheduler(conn, sweep_id, item_id)

    @_retried
    def push_sweep_run(
        self,
        sweep_id: str,
        scheduler_item_id: str,
        number: int,
        params: dict[str, Any],
        system_attrs: dict[str, Any],
        queue: str,
        run_spec: dict[str, Any],
        priority: int | None = None,
    ) -> str | None:
        """Record a trial and push its run item in one transaction (None: the sweep does not
        run, or another scheduler owns it; nothing was written)."""
        with self._tx() as conn:
            qid = self._queue_id(conn, queue, create=True)
            assert qid is not None
            chosen = DEFAULT_PRIORITY if priority is None else priority
            item_id = sql_sweeps.push_sweep_run(
                conn,
                sweep_id,
                scheduler_item_id,
                number,
                params,
                system_attrs,
                qid,
                run_spec,
                chosen,
            )
            if item_id is not None:
                self._notify(conn, queue)
        return item_id

    @_retried
    def update_sweep_run(self, sweep_id: str, number: int, values: dict[str, Any]) -> None:
        with self._tx() as conn:
            sql_sweeps.update_sweep_run(conn, sweep_id, number, **values)

    @_retried
    def prune_sweep_run(
        self, sweep_id: str, number: int, item_id: str, step: int, message: str
    ) -> None:
        """Mark a run pruned at `step` and ask its item to stop, in one transaction."""
        with self._tx() as conn:
            sql_sweeps.update_sweep_run(
                conn, sweep_id, number, state=sql_sweeps.RUN_PRUNING, message=message
            )
            if sql_sweeps.stop_items(conn, [item_id], f"sweep {sweep_id} ({message})"):
                self._notify_all(conn)

    @_retried
    def stop_sweep_items(self, item_ids: list[str], requested_by: str) -> None:
        with self._tx() as conn:
            if sql_sweeps.stop_items(conn, item_ids, requested_by):
                self._notify_all(conn)

    @_retried
    def change_sweep_state(
        self, sweep_id: str, action: str, requested_by: str
    ) -> tuple[str, str, int]:
        """pause | resume | stop | cancel (sql_sweeps.change_state)."""
        with self._tx() as conn:
            result = sql_sweeps.change_state(conn, sweep_id, action, requested_by)
            if result[2]:
                self._notify_all(conn)
            return result

    @_retried
    def finish_sweep(self, sweep_id: str, message: str) -> bool:
        with self._tx() as conn:
            return sql_sweeps.finish_if_running(conn, sweep_id, message)

    @_retried
    def set_stopped_message(self, item_id: str, message: str) -> None:
        with self._tx() as conn:
            sql_sweeps.set_stopped_message(conn, item_id, message)

    def wait_for_items(self, queues: list[str], timeout: float) -> bool:
        """Block until a push to `queues` (True) or `timeout`: LISTEN on PostgreSQL, a
        wake-up socket on a SQLite file (sqlite_wake).

        Without a listener (an in-memory database, listen=False) returns False at once:
        poll instead.
        """
        if self._listener is None:
            return False
        return self._listener.wait(queues, timeout)

    # -- reading, for the CLI and tests --
    @_retried
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

    @_retried
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

    @_retried
    def get_item(self, item_id: str) -> ItemInfo | None:
        key = item_key(item_id)
        if key is None:
            return None
        with self._read() as conn:
            row = conn.execute(_item_select().where(items.c.id == key)).first()
        return _item_info(row) if row is not None else None


def decode_run_spec(raw: Any) -> dict[str, Any]:
    """An item's stored run_spec as a dict; ValueError saying why it cannot be one.

    Decoded here rather than by the JSON column type, so one unreadable row fails alone
    instead of failing every pop (and stalling the queue behind it)."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except RecursionError:
        raise ValueError("run_spec is nested too deeply to read") from None
    except ValueError as exc:
        raise ValueError(f"run_spec is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"run_spec must be a JSON object, not {type(value).__name__}")
    return value


def _fail_unreadable(conn: Connection, item_id: int, why: str, now: float) -> None:
    """Fail an item whose stored spec cannot be read, so the queue behind it moves on."""
    log.warning("item %s cannot be read and fails: %s", item_id, why)
    conn.execute(
        update(items)
        .where(items.c.id == item_id)
        .values(
            state=ItemState.FAILED.value,
            failure_phase=Phase.AGENT.value,
            failure_message=f"the item could not be read: {why}",
            finished_at=now,
            updated_at=now,
        )
    )


class _NotHeld(Exception):
    """Raised inside a transaction to roll it back: the lease no longer holds."""


def stable_agent_id(name: str) -> str:
    """The id of a named agent: the same name is always the same agent."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"launch-agent:{name}").hex


def _lease_of(row: Any, agent_id: str, generation: int) -> Lease:
    """A lease on an item row read with `_item_select` (its run id included)."""
    item = QueueItem(
        id=str(row.id),
        queue=row.queue_name,
        run_spec=_readable_spec(row),
        priority=row.priority,
        attempt=row.attempts,
    )
    return Lease(item, agent_id, generation, run_id=row.run_id)


def _agent_record(row: Any) -> AgentRecord:
    """An agent's record; one marked lost (and not stopped cleanly) shows status LOST."""
    status = row.status
    if row.lost_at is not None and status != AgentStatus.KILLED.value:
        status = "LOST"
    return AgentRecord(
        id=row.id,
        name=row.name,
        status=status,
        stop_polling=bool(row.stop_polling),
        hostname=row.hostname,
        queues=list(row.queues),
        heartbeat_at=row.heartbeat_at,
        generation=row.generation,
    )


def _item_select() -> Any:
    """Items with their queue's name; run_spec as stored text, read by `_readable_spec`."""
    columns = [c for c in items.c if c.name != "run_spec"]
    return select(
        *columns,
        cast(items.c.run_spec, Text).label("raw_spec"),
        queues.c.name.label("queue_name"),
    ).join(queues, queues.c.id == items.c.queue_id)


def _readable_spec(row: Any) -> dict[str, Any]:
    """The row's run_spec, or a note of why it cannot be read (the item failed for it)."""
    try:
        return decode_run_spec(row.raw_spec)
    except ValueError as exc:
        return {"unreadable": str(exc)}


def _item_info(row: Any) -> ItemInfo:
    return ItemInfo(
        id=str(row.id),
        queue=row.queue_name,
        state=ItemState(row.state),
        priority=row.priority,
        run_spec=_readable_spec(row),
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
        stop_requested_by=row.stop_requested_by,
        stop_requested_at=row.stop_requested_at,
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
        # No pre-ping (a round trip per transaction): a connection found dead fails its
        # operation, which the Reconnector retries on a fresh one.
        return create_engine(url, future=True)
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
