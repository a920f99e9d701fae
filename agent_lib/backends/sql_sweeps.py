"""Sweeps in the SQL backend: the sweep record, its runs (Optuna trials) and their items.

Every write that must not be torn is one transaction: a sweep and its scheduler item; a
run's trial row and the push of its run item (checked against the sweep's state and its
owning scheduler in the same transaction); a state change and the items it stops. The
functions take the caller's connection; `SqlBackend` opens the transactions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, select, update

from agent_lib.backends.sql_schema import insert_item, items, queues, sweep_runs, sweeps
from agent_lib.states import ItemState

# W&B's sweep states.
RUNNING = "RUNNING"
PAUSED = "PAUSED"
FINISHED = "FINISHED"
CANCELED = "CANCELED"
SWEEP_STATES = (RUNNING, PAUSED, FINISHED, CANCELED)
ACTIVE_SWEEP_STATES = (RUNNING, PAUSED)

# What the CLI's verbs do: the states they leave, and the state they set.
ACTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "pause": ((RUNNING,), PAUSED),
    "resume": ((PAUSED, RUNNING), RUNNING),
    "stop": ((RUNNING, PAUSED), FINISHED),
    "cancel": ((RUNNING, PAUSED), CANCELED),
}

# States of a sweep run (one trial). "pruning": stop asked, the item has not ended yet.
RUN_QUEUED = "queued"
RUN_RUNNING = "running"
RUN_FINISHED = "finished"
RUN_FAILED = "failed"
RUN_PRUNING = "pruning"
RUN_PRUNED = "pruned"
RUN_STOPPED = "stopped"
OPEN_RUN_STATES = (RUN_QUEUED, RUN_RUNNING, RUN_PRUNING)

_ACTIVE_ITEM_STATES = (ItemState.PENDING.value, ItemState.LEASED.value, ItemState.CLAIMED.value)


class SweepError(Exception):
    """A sweep operation that cannot be done (no such sweep, a state that forbids it)."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass
class SweepRecord:
    id: str
    state: str
    updated_at: float
    name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    created_at: float | None = None
    scheduler_item_id: str | None = None
    message: str | None = None


@dataclass
class SweepRunRecord:
    sweep_id: str
    number: int
    item_id: str
    run_id: str
    params: dict[str, Any]
    system_attrs: dict[str, Any]
    state: str
    value: float | None
    intermediate: dict[int, float]
    message: str | None
    created_at: float
    updated_at: float
    item_state: str | None = None  # the state of its item now


def _sweep(row: Any) -> SweepRecord:
    return SweepRecord(
        id=row.id,
        state=row.state,
        updated_at=row.updated_at,
        name=row.name,
        config=dict(row.config or {}),
        settings=dict(row.settings or {}),
        queue=row.queue,
        created_at=row.created_at,
        scheduler_item_id=row.scheduler_item_id,
        message=row.message,
    )


def _run(row: Any, item_state: str | None) -> SweepRunRecord:
    return SweepRunRecord(
        sweep_id=row.sweep_id,
        number=int(row.number),
        item_id=row.item_id,
        run_id=row.run_id,
        params=dict(row.params or {}),
        system_attrs=dict(row.system_attrs or {}),
        state=row.state,
        value=row.value,
        intermediate={int(k): float(v) for k, v in (row.intermediate or {}).items()},
        message=row.message,
        created_at=row.created_at,
        updated_at=row.updated_at,
        item_state=item_state,
    )


def get_sweep(conn: Connection, sweep_id: str, lock: bool = False) -> SweepRecord | None:
    stmt = select(sweeps).where(sweeps.c.id == sweep_id)
    row = conn.execute(stmt.with_for_update() if lock else stmt).first()
    return _sweep(row) if row is not None else None


def list_sweeps(conn: Connection) -> list[SweepRecord]:
    rows = conn.execute(select(sweeps).order_by(sweeps.c.created_at.desc(), sweeps.c.id)).all()
    return [_sweep(r) for r in rows]


def sweep_runs_of(conn: Connection, sweep_id: str, open_only: bool = False) -> list[SweepRunRecord]:
    """The sweep's runs (or only those not ended yet), with their items' states now."""
    stmt = select(sweep_runs).where(sweep_runs.c.sweep_id == sweep_id)
    if open_only:
        stmt = stmt.where(sweep_runs.c.state.in_(OPEN_RUN_STATES))
    rows = conn.execute(stmt.order_by(sweep_runs.c.number)).all()
    keys = [int(r.item_id) for r in rows if r.item_id.isdigit()]
    states: dict[str, str] = {}
    if keys:
        found = conn.execute(select(items.c.id, items.c.state).where(items.c.id.in_(keys))).all()
        states = {str(i): s for i, s in found}
    return [_run(r, states.get(r.item_id)) for r in rows]


def create_sweep(
    conn: Connection,
    sweep_id: str,
    name: str | None,
    config: dict[str, Any],
    settings: dict[str, Any],
    queue_id: int,
    queue: str,
    scheduler_spec: dict[str, Any],
    priority: int,
) -> str:
    """The sweep (RUNNING) and its scheduler item, together. Returns the item's id."""
    now = time.time()
    conn.execute(
        insert(sweeps).values(
            id=sweep_id,
            state=RUNNING,
            updated_at=now,
            name=name,
            config=config,
            settings=settings,
            queue=queue,
            created_at=now,
        )
    )
    item_id = insert_item(conn, queue_id, scheduler_spec, priority, now)
    conn.execute(update(sweeps).where(sweeps.c.id == sweep_id).values(scheduler_item_id=item_id))
    return item_id


def claim_scheduler(conn: Connection, sweep_id: str, item_id: str) -> SweepRecord | None:
    """Make `item_id` the sweep's scheduler (the last to start wins; an older one sees it
    lost the sweep at its next push and exits)."""
    conn.execute(
        update(sweeps)
        .where(sweeps.c.id == sweep_id)
        .values(scheduler_item_id=item_id, updated_at=time.time())
    )
    return get_sweep(conn, sweep_id)


def push_sweep_run(
    conn: Connection,
    sweep_id: str,
    scheduler_item_id: str,
    number: int,
    params: dict[str, Any],
    system_attrs: dict[str, Any],
    queue_id: int,
    run_spec: dict[str, Any],
    priority: int,
) -> str | None:
    """Record trial `number` and push its run item, in the caller's transaction. None (and
    nothing written) if the sweep no longer runs or another scheduler owns it."""
    # FOR UPDATE (PostgreSQL; SQLite's writers are serialised anyway): a pause, stop or
    # take-over waits for this push, or this push sees it.
    row = conn.execute(
        select(sweeps.c.state, sweeps.c.scheduler_item_id)
        .where(sweeps.c.id == sweep_id)
        .with_for_update()
    ).first()
    if row is None or row.state != RUNNING or row.scheduler_item_id != scheduler_item_id:
        return None
    now = time.time()
    item_id = insert_item(conn, queue_id, run_spec, priority, now)
    conn.execute(
        insert(sweep_runs).values(
            sweep_id=sweep_id,
            number=number,
            item_id=item_id,
            run_id=str(run_spec["run_id"]),
            params=params,
            system_attrs=system_attrs,
            state=RUN_QUEUED,
            intermediate={},
            created_at=now,
            updated_at=now,
        )
    )
    return item_id


def update_sweep_run(conn: Connection, sweep_id: str, number: int, **values: Any) -> None:
    if "intermediate" in values and values["intermediate"] is not None:
        values["intermediate"] = {str(k): v for k, v in values["intermediate"].items()}
    conn.execute(
        update(sweep_runs)
        .where(sweep_runs.c.sweep_id == sweep_id, sweep_runs.c.number == number)
        .values(updated_at=time.time(), **values)
    )


def stop_items(conn: Connection, item_ids: list[str], requested_by: str) -> list[str]:
    """Stop items: queued ones end STOPPED now, running ones are asked to stop (their agent
    stops the job). Returns the ids that were asked (running)."""
    now = time.time()
    keys = [int(i) for i in item_ids if i.isdigit()]
    if not keys:
        return []
    asked = {"stop_requested_by": requested_by, "stop_requested_at": now}
    conn.execute(
        update(items)
        .where(
            items.c.id.in_(keys),
            items.c.state.in_([ItemState.PENDING.value, ItemState.LEASED.value]),
        )
        .values(state=ItemState.STOPPED.value, finished_at=now, updated_at=now, **asked)
    )
    running = conn.execute(
        select(items.c.id).where(
            items.c.id.in_(keys),
            items.c.state == ItemState.CLAIMED.value,
            items.c.stop_requested.is_(False),
        )
    ).all()
    ids = [r.id for r in running]
    if ids:
        conn.execute(
            update(items)
            .where(items.c.id.in_(ids))
            .values(stop_requested=True, updated_at=now, **asked)
        )
    return [str(i) for i in ids]


def change_state(
    conn: Connection, sweep_id: str, action: str, requested_by: str
) -> tuple[str, str, int]:
    """Pause, resume, stop or cancel a sweep (W&B's meanings). Returns (old state, new
    state, items stopped). `stop`: no new runs, queued runs are dropped, running ones
    finish. `cancel`: running runs are stopped too."""
    sweep = get_sweep(conn, sweep_id, lock=True)
    if sweep is None or not sweep.config:
        raise SweepError(f"no sweep {sweep_id!r}", not_found=True)
    allowed, target = ACTIONS[action]
    if sweep.state not in allowed:
        raise SweepError(f"sweep {sweep_id} is {sweep.state}: it cannot {action}")
    conn.execute(
        update(sweeps)
        .where(sweeps.c.id == sweep_id)
        .values(state=target, updated_at=time.time(), message=f"{action} by {requested_by}")
    )
    stopped = 0
    if action in ("stop", "cancel"):
        runs = sweep_runs_of(conn, sweep_id)
        active = [r.item_id for r in runs if r.item_state in _ACTIVE_ITEM_STATES]
        if action == "stop":
            pending = (ItemState.PENDING.value, ItemState.LEASED.value)
            active = [r.item_id for r in runs if r.item_state in pending]
        by = f"{requested_by} ({action} of sweep {sweep_id})"
        before = _count_active(conn, active)
        stop_items(conn, active, by)
        stopped = before
    return sweep.state, target, stopped


def _count_active(conn: Connection, item_ids: list[str]) -> int:
    keys = [int(i) for i in item_ids if i.isdigit()]
    if not keys:
        return 0
    return len(
        conn.execute(
            select(items.c.id).where(items.c.id.in_(keys), items.c.state.in_(_ACTIVE_ITEM_STATES))
        ).all()
    )


def item_state_and_message(conn: Connection, item_id: str) -> tuple[str, str | None] | None:
    if not item_id.isdigit():
        return None
    row = conn.execute(
        select(items.c.state, items.c.failure_message).where(items.c.id == int(item_id))
    ).first()
    return (row.state, row.failure_message) if row is not None else None


def set_stopped_message(conn: Connection, item_id: str, message: str) -> None:
    """Say why a STOPPED run item was stopped (`pruned by hyperband at step N`)."""
    if item_id.isdigit():
        conn.execute(
            update(items)
            .where(items.c.id == int(item_id), items.c.state == ItemState.STOPPED.value)
            .values(failure_message=message)
        )


def queue_id_of(conn: Connection, name: str) -> int | None:
    return conn.execute(select(queues.c.id).where(queues.c.name == name)).scalar()


def finish_if_running(conn: Connection, sweep_id: str, message: str) -> bool:
    """RUNNING -> FINISHED once the search is done (not if someone changed it meanwhile)."""
    done = conn.execute(
        update(sweeps)
        .where(sweeps.c.id == sweep_id, sweeps.c.state == RUNNING)
        .values(state=FINISHED, updated_at=time.time(), message=message)
    )
    return done.rowcount == 1
