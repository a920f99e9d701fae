"""Schema versions: an upgrade keeps queued items; a newer schema is refused."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, insert, select, update

from agent_lib.backends import SqlBackend, migrations
from agent_lib.backends.sql_schema import SCHEMA_VERSION, meta
from agent_lib.backends.sql_url import sqlalchemy_url
from agent_lib.errors import SchemaVersionError
from agent_lib.states import ItemState


def make_v1_database(url: str, queued: int) -> None:
    """A database as the previous release left it: schema v1 with items waiting."""
    engine = create_engine(sqlalchemy_url(url))
    tables = migrations._v1_tables().tables
    now = time.time()
    with engine.begin() as conn:
        assert migrations.upgrade(conn, "test", target=1) == 0
        qid = conn.execute(
            insert(tables["launch_queues"]).values(name="q", created_at=now)
        ).inserted_primary_key[0]
        for n in range(queued):
            conn.execute(
                insert(tables["launch_items"]).values(
                    queue_id=qid,
                    state="PENDING",
                    priority=2,
                    run_spec={"n": n},
                    created_at=now,
                    updated_at=now,
                    attempts=0,
                    stop_requested=False,
                )
            )
    engine.dispose()


def test_upgrade_from_v1_keeps_queued_items(db_url: str, open_db: object) -> None:
    make_v1_database(db_url, queued=5)
    db: SqlBackend = open_db()  # type: ignore[operator]
    with db._read() as conn:
        assert migrations.current_version(conn) == SCHEMA_VERSION
    agent = db.create_launch_agent(None, "p", ["q"], "h", {}, "v")
    popped = []
    while (item := db.pop_from_run_queue("q", None, "p", agent)) is not None:
        assert db.ack_run_queue_item(item, f"r{item.item_id}") is not None
        popped.append(item.item.run_spec["n"])
    assert sorted(popped) == list(range(5))
    assert db.reap_lost_agents() == []  # the v2 columns are there


def test_opening_twice_is_a_no_op(open_db: object) -> None:
    first: SqlBackend = open_db()  # type: ignore[operator]
    item = first.push_to_run_queue("q", {})
    second: SqlBackend = open_db()  # type: ignore[operator]
    assert second.get_item(item).state is ItemState.PENDING  # type: ignore[union-attr]


def test_a_newer_schema_is_refused_and_left_alone(db_url: str, open_db: object) -> None:
    db: SqlBackend = open_db()  # type: ignore[operator]
    with db._tx() as conn:
        conn.execute(update(meta).values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(SchemaVersionError, match="newer than this agent knows") as err:
        open_db()  # type: ignore[operator]
    assert "upgrade the agent" in str(err.value)
    assert ":postgres@" not in str(err.value)  # no password in the message
    with db._read() as conn:
        assert conn.execute(select(meta.c.value)).scalar() == str(SCHEMA_VERSION + 1)
