"""Stable identities: an agent started again by name fences its older incarnation,
takes back its own items (reclaim), and requeues a preempted run in one step."""

from __future__ import annotations

import pytest

from agent_lib.backends import SqlBackend
from agent_lib.backends.base import Lease
from agent_lib.states import ItemState, Phase
from tests.backend.test_contract import pop, register


def claim(db: SqlBackend, agent: str, run_id: str, generation: int = 1) -> Lease:
    lease = pop(db, agent, generation)
    assert lease is not None
    claimed = db.ack_run_queue_item(lease, run_id)
    assert claimed is not None
    return claimed


def state_of(db: SqlBackend, item_id: str) -> ItemState:
    info = db.get_item(item_id)
    assert info is not None
    return info.state


@pytest.mark.parametrize("new_end", ["complete", "fail"])
def test_a_restart_by_name_fences_the_old_incarnation(backend: SqlBackend, new_end: str) -> None:
    agent = register(backend, name="box")
    item_id = backend.push_to_run_queue("q", {"job": "train"})
    old_leased = pop(backend, agent)
    assert old_leased is not None
    old = backend.ack_run_queue_item(old_leased, "r")
    assert old is not None and old.generation == 1

    assert register(backend, name="box") == agent
    assert backend.get_launch_agent(agent).generation == 2
    [new] = backend.reclaim_items(agent, 2)
    assert (new.item_id, new.agent_id, new.generation, new.run_id) == (item_id, agent, 2, "r")
    assert (new.item.queue, new.item.run_spec, new.item.attempt) == ("q", {"job": "train"}, 1)
    assert state_of(backend, item_id) is ItemState.CLAIMED

    # The old incarnation, somehow still alive, can change nothing any more.
    assert not backend.complete_run_queue_item(old, ItemState.FINISHED, 0)
    assert not backend.fail_run_queue_item(old, "old says failed", Phase.RUN)
    assert backend.ack_run_queue_item(old, "r") is None
    assert backend.ack_run_queue_item(old_leased, "r") is None
    assert backend.requeue_run_queue_item(old, {"job": "train"}) is None
    backend.release_run_queue_item(old_leased)
    assert state_of(backend, item_id) is ItemState.CLAIMED
    assert len(backend.list_items(queue="q")) == 1

    # The new one re-attaches (an ack for the same run is idempotent) and settles it.
    assert backend.ack_run_queue_item(new, "r") == new
    if new_end == "complete":
        assert backend.complete_run_queue_item(new, ItemState.STOPPED, 3)
    else:
        assert backend.fail_run_queue_item(new, "new says failed", Phase.RUN)
    assert not backend.complete_run_queue_item(old, ItemState.FINISHED, 0)
    assert not backend.fail_run_queue_item(old, "old says failed", Phase.RUN)
    info = backend.get_item(item_id)
    assert info is not None and info.agent_id == agent and info.run_id == "r"
    if new_end == "complete":
        assert (info.state, info.exit_code, info.failure_message) == (ItemState.STOPPED, 3, None)
    else:
        assert info.state is ItemState.FAILED
        assert (info.failure_phase, info.failure_message) == ("run", "new says failed")


def test_reclaim_takes_claimed_items_and_releases_old_leases_only(backend: SqlBackend) -> None:
    agent = register(backend, name="box")
    stranger = register(backend)
    old_leased_id = backend.push_to_run_queue("q", {"n": 1})
    claimed_id = backend.push_to_run_queue("q", {"n": 2})
    old_leased = pop(backend, agent)
    assert old_leased is not None and old_leased.item_id == old_leased_id
    claimed = claim(backend, agent, "run-2")
    assert claimed.item_id == claimed_id
    others_leased_id = backend.push_to_run_queue("q", {"n": 3})
    others_claimed_id = backend.push_to_run_queue("q", {"n": 4})
    others_leased = pop(backend, stranger)
    assert others_leased is not None and others_leased.item_id == others_leased_id
    others_claimed = claim(backend, stranger, "run-4")

    assert register(backend, name="box") == agent
    current_id = backend.push_to_run_queue("q", {"n": 5})
    current = pop(backend, agent, generation=2)  # leased by the new incarnation already
    assert current is not None and current.item_id == current_id

    reclaimed = backend.reclaim_items(agent, 2)
    assert [(r.item_id, r.generation, r.run_id) for r in reclaimed] == [(claimed_id, 2, "run-2")]
    old_info = backend.get_item(old_leased_id)
    assert old_info is not None and old_info.state is ItemState.PENDING
    assert old_info.agent_id is None
    assert state_of(backend, claimed_id) is ItemState.CLAIMED
    assert state_of(backend, current_id) is ItemState.LEASED
    assert backend.get_item(current_id).agent_id == agent  # type: ignore[union-attr]
    assert state_of(backend, others_leased_id) is ItemState.LEASED
    assert state_of(backend, others_claimed_id) is ItemState.CLAIMED

    assert backend.ack_run_queue_item(old_leased, "late") is None  # went back to its queue
    assert backend.ack_run_queue_item(current, "run-5") is not None  # current lease holds
    assert backend.ack_run_queue_item(others_leased, "run-3") is not None
    assert backend.complete_run_queue_item(others_claimed, ItemState.FINISHED, 0)

    again = backend.reclaim_items(agent, 2)  # twice at the same start: the same answer
    assert sorted((r.item_id, r.run_id) for r in again) == [
        (claimed_id, "run-2"),
        (current_id, "run-5"),
    ]
    repopped = pop(backend, register(backend))
    assert repopped is not None and repopped.item_id == old_leased_id
    assert repopped.item.attempt == 2


def test_reclaim_with_nothing_to_take(backend: SqlBackend) -> None:
    agent = register(backend, name="box")
    assert backend.reclaim_items(agent, 1) == []


def test_requeue_ends_the_item_preempted_and_pushes_its_resume(backend: SqlBackend) -> None:
    agent = register(backend)
    old_id = backend.push_to_run_queue("q", {"job": "train", "sweep_id": "s"}, priority=0)
    backend.push_to_run_queue("q", {"job": "later"}, priority=3)
    claimed = claim(backend, agent, "run-1")
    assert claimed.item_id == old_id
    resume = {"job": "train", "run_id": "run-1", "_resume_count": 1}
    new_id = backend.requeue_run_queue_item(claimed, resume, exit_code=143)
    assert new_id is not None and new_id != old_id
    old = backend.get_item(old_id)
    assert old is not None and old.state is ItemState.PREEMPTED and old.exit_code == 143
    assert new_id in (old.failure_message or "") and "run-1" in (old.failure_message or "")
    new = backend.get_item(new_id)
    assert new is not None and new.state is ItemState.PENDING
    assert (new.queue, new.priority, new.run_spec) == ("q", 0, resume)
    assert new.run_id is None and new.agent_id is None and new.attempts == 0

    # The ended item's lease no longer holds: a second requeue pushes nothing.
    assert backend.requeue_run_queue_item(claimed, resume) is None
    assert not backend.complete_run_queue_item(claimed, ItemState.FINISHED, 0)
    assert len(backend.list_items(queue="q")) == 3
    nxt = pop(backend, agent)  # same priority as the preempted item: before "later"
    assert nxt is not None and nxt.item_id == new_id and nxt.item.run_spec == resume


def test_requeue_with_a_stale_lease_is_refused_and_pushes_nothing(backend: SqlBackend) -> None:
    agent = register(backend, name="box")
    item_id = backend.push_to_run_queue("q", {"job": "train"})
    old = claim(backend, agent, "run-1")
    register(backend, name="box")
    [new] = backend.reclaim_items(agent, 2)
    assert backend.requeue_run_queue_item(old, {"job": "train", "_resume_count": 1}) is None
    assert [i.id for i in backend.list_items(queue="q")] == [item_id]
    assert state_of(backend, item_id) is ItemState.CLAIMED
    new_id = backend.requeue_run_queue_item(new, {"job": "train", "_resume_count": 1})
    assert new_id is not None
    assert state_of(backend, item_id) is ItemState.PREEMPTED
    assert sorted(i.id for i in backend.list_items(queue="q")) == sorted([item_id, new_id])
