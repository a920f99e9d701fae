"""An item whose stored spec cannot be read fails alone; the queue behind it moves on."""

from __future__ import annotations

from sqlalchemy import text, update

from agent_lib.backends import SqlBackend
from agent_lib.backends.sql_schema import items
from agent_lib.states import ItemState
from tests.backend.test_contract import register


def corrupt(db: SqlBackend, item_id: str, raw: str) -> None:
    """Write `raw` into the row's run_spec as stored text, behind the JSON type's back."""
    with db._tx() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(
                text("UPDATE launch_items SET run_spec = CAST(:raw AS json) WHERE id = :id"),
                {"raw": raw, "id": int(item_id)},
            )
        else:
            conn.execute(
                text("UPDATE launch_items SET run_spec = :raw WHERE id = :id"),
                {"raw": raw, "id": int(item_id)},
            )


def test_unreadable_items_fail_with_a_reason_and_the_next_one_pops(backend: SqlBackend) -> None:
    agent = register(backend)
    deep = backend.push_to_run_queue("q", {})
    not_object = backend.push_to_run_queue("q", {})
    good = backend.push_to_run_queue("q", {"n": 1})
    corrupt(backend, deep, "[" * 5000 + "]" * 5000)
    corrupt(backend, not_object, '["a", "list"]')

    lease = backend.pop_from_run_queue("q", None, "proj", agent, 1)

    assert lease is not None and lease.item_id == good and lease.item.run_spec == {"n": 1}
    for item_id, why in ((deep, "nested too deeply"), (not_object, "must be a JSON object")):
        info = backend.get_item(item_id)
        assert info is not None and info.state is ItemState.FAILED
        assert info.failure_phase == "agent"
        assert why in (info.failure_message or ""), info.failure_message


def test_a_row_that_is_not_json_fails_alone_on_sqlite(backend: SqlBackend, db_url: str) -> None:
    if "sqlite" not in db_url:
        return  # PostgreSQL's json type refuses such text on write: nothing to read back
    agent = register(backend)
    broken = backend.push_to_run_queue("q", {})
    good = backend.push_to_run_queue("q", {"n": 2})
    with backend._tx() as conn:
        conn.execute(update(items).where(items.c.id == int(broken)).values(run_spec=None))
        conn.execute(
            text("UPDATE launch_items SET run_spec = '{oops' WHERE id = :id"), {"id": int(broken)}
        )

    lease = backend.pop_from_run_queue("q", None, "proj", agent, 1)

    assert lease is not None and lease.item_id == good
    info = backend.get_item(broken)
    assert info is not None and info.state is ItemState.FAILED
    assert "not valid JSON" in (info.failure_message or "")
