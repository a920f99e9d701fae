"""What every SQL backend promises the agent (run on SQLite and PostgreSQL alike)."""

from __future__ import annotations

import threading
import time
from collections import Counter

from agent_lib.backends import SqlBackend
from agent_lib.states import AgentStatus, ItemState, Phase


def register(db: SqlBackend, queues: list[str] | None = None, **config: object) -> str:
    return db.create_launch_agent(None, "proj", queues or ["q"], "host", dict(config), "test")


def test_push_pop_ack_finish(backend: SqlBackend) -> None:
    agent = register(backend)
    item_id = backend.push_to_run_queue("q", {"job": "train", "unknown_key": [1]})
    item = backend.pop_from_run_queue("q", None, "proj", agent)
    assert item is not None and item.id == item_id and item.run_spec["unknown_key"] == [1]
    assert backend.get_item(item_id).state is ItemState.LEASED  # type: ignore[union-attr]
    assert backend.ack_run_queue_item(item_id, "run1")
    assert backend.ack_run_queue_item(item_id, "run1") is False  # lease memo used up
    backend.complete_run_queue_item(item_id, ItemState.FINISHED, 0)
    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FINISHED and info.run_id == "run1"
    assert backend.pop_from_run_queue("q", None, "proj", agent) is None


def test_priority_then_fifo(backend: SqlBackend) -> None:
    agent = register(backend)
    low = backend.push_to_run_queue("q", {"n": 1}, priority=3)
    first = backend.push_to_run_queue("q", {"n": 2})
    second = backend.push_to_run_queue("q", {"n": 3})
    urgent = backend.push_to_run_queue("q", {"n": 4}, priority=0)
    popped = [backend.pop_from_run_queue("q", None, "proj", agent) for _ in range(4)]
    assert [p.id for p in popped if p] == [urgent, first, second, low]


def test_concurrent_pops_never_share_an_item(open_db: object) -> None:
    first: SqlBackend = open_db()  # type: ignore[operator]
    ids = [first.push_to_run_queue("q", {"n": n}) for n in range(60)]
    got: Counter[str] = Counter()
    lock = threading.Lock()

    def drain() -> None:
        db: SqlBackend = open_db()  # type: ignore[operator]
        agent = register(db)
        while (item := db.pop_from_run_queue("q", None, "proj", agent)) is not None:
            assert db.ack_run_queue_item(item.id, f"run-{item.id}")
            with lock:
                got[item.id] += 1

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == sorted(ids) and set(got.values()) == {1}


def test_expired_lease_returns_item_and_old_holder_cannot_ack(open_db: object) -> None:
    slow: SqlBackend = open_db(lease_seconds=0.2)  # type: ignore[operator]
    other: SqlBackend = open_db(lease_seconds=30)  # type: ignore[operator]
    a, b = register(slow), register(other)
    item_id = slow.push_to_run_queue("q", {})
    assert slow.pop_from_run_queue("q", None, "proj", a) is not None
    time.sleep(0.3)
    again = other.pop_from_run_queue("q", None, "proj", b)
    assert again is not None and again.id == item_id and again.attempt == 2
    assert not slow.ack_run_queue_item(item_id, "late")
    assert other.ack_run_queue_item(item_id, "ontime")


def test_ack_is_idempotent_for_the_lease_holder(backend: SqlBackend) -> None:
    """An ack retried after its commit was lost with the connection still succeeds."""
    agent = register(backend)
    item_id = backend.push_to_run_queue("q", {})
    item = backend.pop_from_run_queue("q", None, "proj", agent)
    assert item is not None
    lease = backend._leases[item_id]
    assert backend.ack_run_queue_item(item_id, "r")
    backend._leases[item_id] = lease  # as if the first answer never arrived
    assert backend.ack_run_queue_item(item_id, "r")
    backend._leases[item_id] = lease
    assert not backend.ack_run_queue_item(item_id, "another-run")


def test_release_fail_warn_cancel(backend: SqlBackend) -> None:
    agent = register(backend)
    item_id = backend.push_to_run_queue("q", {})
    backend.pop_from_run_queue("q", None, "proj", agent)
    backend.release_run_queue_item(item_id)
    assert backend.get_item(item_id).state is ItemState.PENDING  # type: ignore[union-attr]
    item = backend.pop_from_run_queue("q", None, "proj", agent)
    assert item is not None and backend.ack_run_queue_item(item.id, "r")
    assert backend.update_run_queue_item_warning(item_id, "slow disk", "run")
    assert backend.fail_run_queue_item(item_id, "exit 3", Phase.RUN)
    assert not backend.fail_run_queue_item(item_id, "again", Phase.RUN)
    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FAILED
    assert (info.failure_phase, info.failure_message) == ("run", "exit 3")
    assert info.warnings[0]["message"] == "slow disk"
    queued = backend.push_to_run_queue("q", {})
    assert backend.cancel_run_queue_item(queued) is ItemState.STOPPED


def test_stop_request_and_sweeps(backend: SqlBackend) -> None:
    agent = register(backend)
    item_id = backend.push_to_run_queue("q", {})
    backend.pop_from_run_queue("q", None, "proj", agent)
    backend.ack_run_queue_item(item_id, "r9")
    assert not backend.run_should_stop(None, None, "r9")
    assert backend.cancel_run_queue_item(item_id) is ItemState.CLAIMED
    assert backend.run_should_stop(None, None, "r9")
    assert backend.get_sweep_state("s", None, None) is None
    backend.set_sweep_state("s", "RUNNING", None, None)
    backend.set_sweep_state("s", "PAUSED", None, None)
    assert backend.get_sweep_state("s", None, None) == "PAUSED"


def test_agent_record_status_and_stop_polling(backend: SqlBackend) -> None:
    agent = register(backend, ["a", "b"])
    assert backend.update_launch_agent_status(agent, AgentStatus.RUNNING)
    backend.heartbeat(agent)
    record = backend.get_launch_agent(agent)
    assert record.status == "RUNNING" and record.queues == ["a", "b"]
    assert backend.stop_agent(record.name)
    assert backend.get_launch_agent(agent).stop_polling
    assert {q.name for q in backend.list_queues()} == {"a", "b"}


def test_display_url_hides_the_password(db_url: str, backend: SqlBackend) -> None:
    if "postgres" in db_url:
        assert "postgres:***@" in backend.display_url
        assert ":postgres@" not in backend.display_url
