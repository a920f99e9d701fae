"""The sweep store (SQLite and PostgreSQL): schema v5 upgrade, and the transactions that
keep a sweep's runs exactly-once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert

from agent_lib.backends import SqlBackend, migrations
from agent_lib.backends.sql_schema import SCHEMA_VERSION
from agent_lib.backends.sql_sweeps import SweepError
from agent_lib.backends.sql_url import sqlalchemy_url
from agent_lib.states import ItemState
from tests.backend.pg import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
        return
    with fresh_database() as found:
        yield sqlalchemy_url(found)


def test_upgrade_from_v4_keeps_sweep_states(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        migrations.upgrade(conn, "test", target=4)
        table = migrations._v1_tables().tables["launch_sweeps"]
        conn.execute(insert(table).values(id="old", state="PAUSED", updated_at=time.time()))
    engine.dispose()
    db = SqlBackend(url)
    try:
        with db._read() as conn:
            assert migrations.current_version(conn) == SCHEMA_VERSION == 5
        assert db.get_sweep_state("old", None, None) == "PAUSED"
        old = db.get_sweep("old")
        assert old is not None and old.config == {} and old.scheduler_item_id is None
        assert db.sweep_runs("old") == []
    finally:
        db.close()


def test_a_run_is_pushed_only_by_the_owning_scheduler_of_a_running_sweep(url: str) -> None:
    db = SqlBackend(url)
    try:
        first = db.create_sweep("s1", None, {"method": "grid"}, {}, "q", {"uri": "x"})
        sweep = db.get_sweep("s1")
        assert sweep is not None and sweep.state == "RUNNING"
        assert sweep.scheduler_item_id == first

        def push(owner: str, number: int) -> str | None:
            spec = {"run_id": f"r{number}", "sweep_id": "s1"}
            return db.push_sweep_run("s1", owner, number, {"x": number}, {}, "q", spec)

        assert push("someone-else", 0) is None
        item = push(first, 0)
        assert item is not None and [r.number for r in db.sweep_runs("s1")] == [0]
        db.claim_sweep_scheduler("s1", "99")  # a newer scheduler took over
        assert push(first, 1) is None
        db.change_sweep_state("s1", "pause", "me")
        assert push("99", 1) is None
        assert [r.item_id for r in db.sweep_runs("s1")] == [item]
        assert len(db.list_items("q")) == 2  # the scheduler item and one run, nothing else

        with pytest.raises(SweepError, match="is PAUSED: it cannot pause"):
            db.change_sweep_state("s1", "pause", "me")
        assert db.change_sweep_state("s1", "cancel", "me") == ("PAUSED", "CANCELED", 1)
        info = db.get_item(item)
        assert info is not None and info.state is ItemState.STOPPED
        with pytest.raises(SweepError) as missing:
            db.change_sweep_state("nope", "stop", "me")
        assert missing.value.not_found
    finally:
        db.close()
