"""What every SQL backend promises the agent (run on SQLite and PostgreSQL alike)."""

from __future__ import annotations

import threading
import time
from collections import Counter

from agent_lib.backends import SqlBackend
from agent_lib.backends.base import Lease
from agent_lib.states import AgentStatus, ItemState, Phase


def register(
    db: SqlBackend, queues: list[str] | None = None, *, name: str | None = None, **config: object
) -> str:
    return db.create_launch_agent(
        None, "proj", queues or ["q"], "host", dict(config), "test", name=name
    )


def pop(db: SqlBackend, agent: str, generation: int = 1, queue: str = "q") -> Lease | None:
    """Pop for `agent` as its incarnation `generation` (a first registration is 1)."""
    return db.pop_from_run_queue(queue, None, "proj", agent, generation)


def test_push_pop_ack_finish(backend: SqlBackend) -> None:
    agent = register(backend)
    assert backend.get_launch_agent(agent).generation == 1
    item_id = backend.push_to_run_queue("q", {"job": "train", "unknown_key": [1]})
    lease = pop(backend, agent)
    assert lease is not None and lease.item_id == item_id and lease.agent_id == agent
    assert lease.item.run_spec["unknown_key"] == [1] and lease["runSpec"]["job"] == "train"
    assert (lease.item.queue, lease.item.priority, lease.item.attempt) == ("q", 2, 1)
    assert (lease.generation, lease.run_id) == (1, None) and lease.expires_at is not None
    assert backend.get_item(item_id).state is ItemState.LEASED  # type: ignore[union-attr]
    claimed = backend.ack_run_queue_item(lease, "run1")
    assert claimed is not None and claimed.run_id == "run1" and claimed.item_id == item_id
    assert backend.get_item(item_id).state is ItemState.CLAIMED  # type: ignore[union-attr]
    assert backend.complete_run_queue_item(claimed, ItemState.FINISHED, 0)
    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FINISHED and info.run_id == "run1"
    assert info.exit_code == 0
    assert not backend.complete_run_queue_item(claimed, ItemState.STOPPED)  # already ended
    assert backend.ack_run_queue_item(lease, "run1") is None  # ended: nothing to claim
    assert backend.get_item(item_id).state is ItemState.FINISHED  # type: ignore[union-attr]
    assert pop(backend, agent) is None


def test_unnamed_agents_are_new_each_time_and_named_ones_the_same(backend: SqlBackend) -> None:
    first, second = register(backend), register(backend)
    assert first != second
    assert backend.get_launch_agent(second).generation == 1
    named = register(backend, name="box-1")
    assert register(backend, name="box-1") == named
    assert register(backend, name="box-2") != named
    assert backend.get_launch_agent(named).generation == 2
    assert backend.get_launch_agent(named).name == "box-1"


def test_priority_then_fifo(backend: SqlBackend) -> None:
    agent = register(backend)
    low = backend.push_to_run_queue("q", {"n": 1}, priority=3)
    first = backend.push_to_run_queue("q", {"n": 2})
    second = backend.push_to_run_queue("q", {"n": 3})
    urgent = backend.push_to_run_queue("q", {"n": 4}, priority=0)
    popped = [pop(backend, agent) for _ in range(4)]
    assert [p.item_id for p in popped if p] == [urgent, first, second, low]


def test_concurrent_pops_never_share_an_item(open_db: object) -> None:
    first: SqlBackend = open_db()  # type: ignore[operator]
    ids = [first.push_to_run_queue("q", {"n": n}) for n in range(60)]
    got: Counter[str] = Counter()
    lock = threading.Lock()

    def drain() -> None:
        db: SqlBackend = open_db()  # type: ignore[operator]
        agent = register(db)
        while (lease := pop(db, agent)) is not None:
            assert db.ack_run_queue_item(lease, f"run-{lease.item_id}") is not None
            with lock:
                got[lease.item_id] += 1

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
    stale = pop(slow, a)
    assert stale is not None
    time.sleep(0.3)
    again = pop(other, b)
    assert again is not None and again.item_id == item_id and again.item.attempt == 2
    assert slow.ack_run_queue_item(stale, "late") is None
    assert other.ack_run_queue_item(again, "ontime") is not None
    assert not slow.fail_run_queue_item(stale, "late", Phase.RUN)
    assert not slow.complete_run_queue_item(stale, ItemState.FINISHED, 0)
    info = other.get_item(item_id)
    assert info is not None and info.state is ItemState.CLAIMED and info.run_id == "ontime"


def test_expired_lease_repopped_by_the_same_agent_refuses_the_older_ack(
    open_db: object,
) -> None:
    db: SqlBackend = open_db(lease_seconds=0.2)  # type: ignore[operator]
    agent = register(db)
    db.push_to_run_queue("q", {})
    old = pop(db, agent)
    time.sleep(0.3)
    new = pop(db, agent)
    assert old is not None and new is not None and new.item.attempt == 2
    assert db.ack_run_queue_item(old, "r-old") is None  # another attempt's lease
    assert db.ack_run_queue_item(new, "r-new") is not None


def test_ack_is_idempotent_for_the_lease_holder(backend: SqlBackend) -> None:
    """An ack retried after its commit was lost with the connection still succeeds."""
    agent = register(backend)
    item_id = backend.push_to_run_queue("q", {})
    lease = pop(backend, agent)
    assert lease is not None
    first = backend.ack_run_queue_item(lease, "r")
    assert first is not None
    assert backend.ack_run_queue_item(lease, "r") == first  # as if the answer was lost
    assert backend.ack_run_queue_item(first, "r") == first
    assert backend.ack_run_queue_item(lease, "another-run") is None
    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.CLAIMED and info.run_id == "r"


def test_release_fail_warn_cancel(backend: SqlBackend) -> None:
    agent = register(backend)
    item_id = backend.push_to_run_queue("q", {})
    lease = pop(backend, agent)
    assert lease is not None
    backend.release_run_queue_item(lease)
    assert backend.get_item(item_id).state is ItemState.PENDING  # type: ignore[union-attr]
    assert backend.ack_run_queue_item(lease, "r") is None  # released: no longer held
    again = pop(backend, agent)
    assert again is not None and again.item_id == item_id
    claimed = backend.ack_run_queue_item(again, "r")
    assert claimed is not None
    backend.release_run_queue_item(claimed)  # only an unacked item can be released
    assert backend.get_item(item_id).state is ItemState.CLAIMED  # type: ignore[union-attr]
    assert backend.update_run_queue_item_warning(item_id, "slow disk", "run")
    assert backend.fail_run_queue_item(claimed, "exit 3", Phase.RUN)
    assert not backend.fail_run_queue_item(claimed, "again", Phase.RUN)
    info = backend.get_item(item_id)
    assert info is not None and info.state is ItemState.FAILED
    assert (info.failure_phase, info.failure_message) == ("run", "exit 3")
    assert info.warnings[0]["message"] == "slow disk"
    queued = backend.push_to_run_queue("q", {})
    assert backend.cancel_run_queue_item(queued) is ItemState.STOPPED


def test_another_agent_cannot_settle_an_item(backend: SqlBackend) -> None:
    holder, intruder = register(backend), register(backend)
    backend.push_to_run_queue("q", {})
    lease = pop(backend, holder)
    assert lease is not None
    claimed = backend.ack_run_queue_item(lease, "r")
    assert claimed is not None
    forged = Lease(claimed.item, intruder, 1, run_id="r")
    assert backend.ack_run_queue_item(forged, "r") is None
    assert not backend.complete_run_queue_item(forged, ItemState.FINISHED, 0)
    assert not backend.fail_run_queue_item(forged, "no", Phase.RUN)
    assert backend.requeue_run_queue_item(forged, {"again": 1}) is None
    assert backend.complete_run_queue_item(claimed, ItemState.FINISHED, 0)


def test_stop_request_and_sweeps(backend: SqlBackend) -> None:
    agent = register(backend)
    item_id = backend.push_to_run_queue("q", {})
    lease = pop(backend, agent)
    assert lease is not None and backend.ack_run_queue_item(lease, "r9") is not None
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
