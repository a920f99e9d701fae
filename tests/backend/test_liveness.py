"""Agent liveness: lost agents, their items (failed or requeued), and coming back."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agent_lib.backends import SqlBackend
from agent_lib.backends.base import Lease
from agent_lib.backends.sql_liveness import LostAgent
from agent_lib.states import AgentStatus, ItemState, Phase
from tests.backend.test_contract import pop, register

TIMEOUT = 0.3


@pytest.fixture
def judge(open_db: object) -> SqlBackend:
    """A backend that has been connected long enough to judge others."""
    db: SqlBackend = open_db()  # type: ignore[operator]
    db._reconnect._healthy_since = time.monotonic() - 3600
    return db


def leased_and_claimed(
    db: SqlBackend, agent: str, spec: dict[str, Any] | None = None, priority: int | None = None
) -> tuple[Lease, Lease]:
    """One item left LEASED, one CLAIMED (run `run-c`, with `spec`) by `agent`."""
    db.push_to_run_queue("q", {"n": 1})
    db.push_to_run_queue("q", spec if spec is not None else {"n": 2}, priority=priority)
    first = pop(db, agent)
    second = pop(db, agent)
    assert first is not None and second is not None
    if priority is not None and priority < 2:  # the claimed item was popped first
        first, second = second, first
    claimed = db.ack_run_queue_item(second, "run-c")
    assert claimed is not None
    return first, claimed


def lose(judge: SqlBackend) -> list[LostAgent]:
    time.sleep(TIMEOUT + 0.2)
    return judge.reap_lost_agents()


def test_silent_agent_is_lost_and_its_items_settled(backend: SqlBackend, judge: SqlBackend) -> None:
    agent = register(backend, agent_timeout=TIMEOUT)
    leased, claimed = leased_and_claimed(backend, agent)
    assert judge.reap_lost_agents() == []  # it heartbeated just now
    time.sleep(TIMEOUT + 0.2)
    lost = judge.reap_lost_agents()
    assert [(a.id, a.requeued, a.failed) for a in lost] == [(agent, 1, 1)]
    assert judge.reap_lost_agents() == []  # marked once
    assert judge.get_item(leased.item_id).state is ItemState.PENDING  # type: ignore[union-attr]
    info = judge.get_item(claimed.item_id)
    assert info is not None and info.state is ItemState.FAILED
    assert info.failure_phase == "agent" and "was lost" in (info.failure_message or "")
    assert judge.get_launch_agent(agent).status == "LOST"
    assert len(judge.list_items(queue="q")) == 2  # "fail" pushes nothing
    other = register(judge)
    again = pop(judge, other)
    assert again is not None and again.item_id == leased.item_id


def test_a_newly_connected_judge_waits_a_full_timeout(open_db: object) -> None:
    db: SqlBackend = open_db()  # type: ignore[operator]
    agent = register(db, agent_timeout=5.0)
    db.heartbeat(agent)
    db._reconnect._healthy_since = time.monotonic() - 1  # back from an outage 1 s ago
    with db._tx() as conn:  # the agent's last heartbeat is old, as after an outage
        from agent_lib.backends.sql_schema import agents

        conn.execute(agents.update().values(heartbeat_at=time.time() - 60))
    assert db.reap_lost_agents() == []


def test_lost_agent_that_comes_back_takes_its_items_back(
    backend: SqlBackend, judge: SqlBackend
) -> None:
    agent = register(backend, agent_timeout=TIMEOUT)
    leased, claimed = leased_and_claimed(backend, agent)
    assert lose(judge)
    backend.heartbeat(agent)
    info = backend.get_item(claimed.item_id)
    assert info is not None and info.state is ItemState.CLAIMED and info.failure_message is None
    assert backend.get_item(leased.item_id).state is ItemState.PENDING  # type: ignore[union-attr]
    assert backend.ack_run_queue_item(leased, "run-l") is None  # its lease is gone
    assert backend.get_launch_agent(agent).status == AgentStatus.POLLING.value
    assert backend.complete_run_queue_item(claimed, ItemState.FINISHED, 0)  # still its own


@pytest.mark.parametrize("end", ["complete", "fail"])
def test_real_end_replaces_a_lost_verdict(backend: SqlBackend, judge: SqlBackend, end: str) -> None:
    agent = register(backend, agent_timeout=TIMEOUT)
    _, claimed = leased_and_claimed(backend, agent)
    assert lose(judge)
    stranger = Lease(claimed.item, register(backend), 1, run_id="run-c")
    assert not backend.complete_run_queue_item(stranger, ItemState.FINISHED, 0)
    if end == "complete":
        assert backend.complete_run_queue_item(claimed, ItemState.FINISHED, 0)
    else:
        assert backend.fail_run_queue_item(claimed, "exit 7", Phase.RUN)
    info = backend.get_item(claimed.item_id)
    assert info is not None
    if end == "complete":
        assert info.state is ItemState.FINISHED and info.failure_message is None
        assert info.failure_phase is None and info.exit_code == 0
    else:
        assert info.state is ItemState.FAILED
        assert (info.failure_phase, info.failure_message) == ("run", "exit 7")
    # A real end is final: neither another report nor a restart takes it back.
    assert not backend.complete_run_queue_item(claimed, ItemState.STOPPED)
    assert not backend.fail_run_queue_item(claimed, "again", Phase.RUN)
    backend.heartbeat(agent)
    assert backend.get_item(claimed.item_id).state is info.state  # type: ignore[union-attr]


def test_lost_agent_restarted_by_name_reclaims_its_failed_items(
    backend: SqlBackend, judge: SqlBackend
) -> None:
    agent = register(backend, name="box", agent_timeout=TIMEOUT)
    leased, claimed = leased_and_claimed(backend, agent)
    assert lose(judge)
    assert backend.get_item(claimed.item_id).state is ItemState.FAILED  # type: ignore[union-attr]

    assert register(backend, name="box", agent_timeout=TIMEOUT) == agent
    assert backend.get_launch_agent(agent).generation == 2
    [new] = backend.reclaim_items(agent, 2)
    assert (new.item_id, new.generation, new.run_id) == (claimed.item_id, 2, "run-c")
    info = backend.get_item(claimed.item_id)
    assert info is not None and info.state is ItemState.CLAIMED
    assert info.failure_message is None and info.failure_phase is None
    assert backend.get_item(leased.item_id).state is ItemState.PENDING  # type: ignore[union-attr]
    assert backend.get_launch_agent(agent).status != "LOST"
    assert judge.reap_lost_agents() == []  # it is alive again

    assert not backend.complete_run_queue_item(claimed, ItemState.FINISHED, 0)  # fenced
    assert backend.complete_run_queue_item(new, ItemState.FINISHED, 0)
    info = backend.get_item(claimed.item_id)
    assert info is not None and info.state is ItemState.FINISHED and info.exit_code == 0


def test_on_agent_lost_requeue_pushes_a_resume(backend: SqlBackend, judge: SqlBackend) -> None:
    agent = register(backend, agent_timeout=TIMEOUT, on_agent_lost="requeue")
    spec = {"job": "train", "sweep_id": "s1", "args": [1]}
    leased, claimed = leased_and_claimed(backend, agent, spec, priority=1)
    lost = lose(judge)
    assert [(a.id, a.requeued, a.failed) for a in lost] == [(agent, 2, 0)]
    assert judge.get_item(leased.item_id).state is ItemState.PENDING  # type: ignore[union-attr]
    old = judge.get_item(claimed.item_id)
    assert old is not None and old.state is ItemState.PREEMPTED and old.failure_phase == "agent"
    [new] = [
        i for i in judge.list_items(queue="q") if i.id not in (leased.item_id, claimed.item_id)
    ]
    assert new.id in (old.failure_message or "") and "was lost" in (old.failure_message or "")
    assert new.state is ItemState.PENDING and new.priority == 1
    assert new.run_spec == {"job": "train", "args": [1], "run_id": "run-c", "_resume_count": 1}
    # The holder cannot settle a requeued item: its resume runs instead.
    assert not backend.complete_run_queue_item(claimed, ItemState.FINISHED, 0)
    backend.heartbeat(agent)
    assert judge.get_item(claimed.item_id).state is ItemState.PREEMPTED  # type: ignore[union-attr]
    resumed = pop(judge, register(judge))
    assert resumed is not None and resumed.item_id == new.id


@pytest.mark.parametrize(
    ("limit", "done"),
    [(2, 2), (None, 5), (0, 0)],  # None: the default limit, 5
)
def test_on_agent_lost_requeue_stops_at_max_resume_count(
    backend: SqlBackend, judge: SqlBackend, limit: int | None, done: int
) -> None:
    config: dict[str, Any] = {"agent_timeout": TIMEOUT, "on_agent_lost": "requeue"}
    if limit is not None:
        config["max_resume_count"] = limit
    agent = register(backend, **config)
    spec = {"job": "train", "run_id": "run-c", "_resume_count": done}
    _, claimed = leased_and_claimed(backend, agent, spec)
    lost = lose(judge)
    assert [(a.id, a.requeued, a.failed) for a in lost] == [(agent, 1, 1)]
    info = judge.get_item(claimed.item_id)
    assert info is not None and info.state is ItemState.FAILED
    assert info.failure_phase == "agent" and "was lost" in (info.failure_message or "")
    assert len(judge.list_items(queue="q")) == 2  # no resume pushed
    # Failed as under "fail": the agent that comes back takes it back.
    backend.heartbeat(agent)
    assert judge.get_item(claimed.item_id).state is ItemState.CLAIMED  # type: ignore[union-attr]


def test_on_agent_lost_requeue_below_the_limit_resumes_once_more(
    backend: SqlBackend, judge: SqlBackend
) -> None:
    agent = register(backend, agent_timeout=TIMEOUT, on_agent_lost="requeue", max_resume_count=2)
    spec = {"job": "train", "run_id": "run-c", "_resume_count": 1}
    _, claimed = leased_and_claimed(backend, agent, spec)
    lost = lose(judge)
    assert [(a.requeued, a.failed) for a in lost] == [(2, 0)]
    assert judge.get_item(claimed.item_id).state is ItemState.PREEMPTED  # type: ignore[union-attr]
    [new] = judge.list_items(queue="q", states=[ItemState.PENDING], limit=1)
    assert new.run_spec == {"job": "train", "run_id": "run-c", "_resume_count": 2}
