"""Agent liveness: lost agents, their items, coming back, and who may adopt a run."""

from __future__ import annotations

import time

import pytest

from agent_lib.backends import SqlBackend
from agent_lib.states import AgentStatus, ItemState
from tests.backend.test_contract import register

TIMEOUT = 0.3


@pytest.fixture
def judge(open_db: object) -> SqlBackend:
    """A backend that has been connected long enough to judge others."""
    db: SqlBackend = open_db()  # type: ignore[operator]
    db._reconnect._healthy_since = time.monotonic() - 3600
    return db


def leased_and_claimed(db: SqlBackend, agent: str) -> tuple[str, str]:
    leased = db.push_to_run_queue("q", {"n": 1})
    claimed = db.push_to_run_queue("q", {"n": 2})
    first = db.pop_from_run_queue("q", None, "proj", agent)
    second = db.pop_from_run_queue("q", None, "proj", agent)
    assert first is not None and second is not None
    assert db.ack_run_queue_item(claimed, "run-c")
    return leased, claimed


def test_silent_agent_is_lost_and_its_items_settled(backend: SqlBackend, judge: SqlBackend) -> None:
    agent = register(backend, agent_timeout=TIMEOUT)
    leased, claimed = leased_and_claimed(backend, agent)
    assert judge.reap_lost_agents() == []  # it heartbeated just now
    time.sleep(TIMEOUT + 0.2)
    lost = judge.reap_lost_agents()
    assert [(a.id, a.requeued, a.failed) for a in lost] == [(agent, 1, 1)]
    assert judge.reap_lost_agents() == []  # marked once
    assert judge.get_item(leased).state is ItemState.PENDING  # type: ignore[union-attr]
    info = judge.get_item(claimed)
    assert info is not None and info.state is ItemState.FAILED
    assert info.failure_phase == "agent" and "was lost" in (info.failure_message or "")
    assert judge.get_launch_agent(agent).status == "LOST"
    other = register(judge)
    again = judge.pop_from_run_queue("q", None, "proj", other)
    assert again is not None and again.id == leased


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
    time.sleep(TIMEOUT + 0.2)
    assert judge.reap_lost_agents()
    backend.heartbeat(agent)
    assert backend.get_item(claimed).state is ItemState.CLAIMED  # type: ignore[union-attr]
    assert backend.get_item(leased).state is ItemState.PENDING  # type: ignore[union-attr]
    assert not backend.ack_run_queue_item(leased, "run-l")  # its lease is gone
    assert backend.get_launch_agent(agent).status == AgentStatus.POLLING.value


def test_real_end_replaces_a_lost_verdict(backend: SqlBackend, judge: SqlBackend) -> None:
    agent = register(backend, agent_timeout=TIMEOUT)
    _, claimed = leased_and_claimed(backend, agent)
    time.sleep(TIMEOUT + 0.2)
    judge.reap_lost_agents()
    backend.complete_run_queue_item(claimed, ItemState.FINISHED, 0)
    info = backend.get_item(claimed)
    assert info is not None and info.state is ItemState.FINISHED and info.failure_message is None


def test_adopt_is_refused_while_the_holder_lives(backend: SqlBackend) -> None:
    holder = register(backend, agent_timeout=30)
    newcomer = register(backend)
    _, claimed = leased_and_claimed(backend, holder)
    assert not backend.adopt_run_queue_item(claimed, "run-c", newcomer)
    assert backend.adopt_run_queue_item(claimed, "run-c", holder)  # its own: idempotent


def test_adopt_after_the_holder_went_silent_or_stopped(backend: SqlBackend) -> None:
    holder = register(backend, agent_timeout=TIMEOUT)
    newcomer = register(backend)
    _, claimed = leased_and_claimed(backend, holder)
    time.sleep(TIMEOUT + 0.2)  # silent, not yet marked lost by anyone
    assert not backend.adopt_run_queue_item(claimed, "wrong-run", newcomer)
    assert backend.adopt_run_queue_item(claimed, "run-c", newcomer)
    assert backend.get_item(claimed).agent_id == newcomer  # type: ignore[union-attr]
    backend.heartbeat(newcomer)
    third = register(backend)
    assert not backend.adopt_run_queue_item(claimed, "run-c", third)
    backend.update_launch_agent_status(newcomer, AgentStatus.KILLED)
    assert backend.adopt_run_queue_item(claimed, "run-c", third)


def test_adopt_undoes_a_lost_verdict_but_not_a_real_end(
    backend: SqlBackend, judge: SqlBackend
) -> None:
    holder = register(backend, agent_timeout=TIMEOUT)
    _, claimed = leased_and_claimed(backend, holder)
    time.sleep(TIMEOUT + 0.2)
    judge.reap_lost_agents()
    newcomer = register(backend)
    assert backend.adopt_run_queue_item(claimed, "run-c", newcomer)
    info = backend.get_item(claimed)
    assert info is not None and info.state is ItemState.CLAIMED and info.failure_message is None
    backend.complete_run_queue_item(claimed, ItemState.FINISHED, 0)
    assert not backend.adopt_run_queue_item(claimed, "run-c", register(backend))
