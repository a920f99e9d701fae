"""The idle request budget: an idle agent costs W&B no more than W&B's own agent does
(~0.23 requests/s), and polls quickly for a while after activity.

The backend is driven the way the agent drives it (a pop every `poll_interval`, a look at
its record every `heartbeat_interval`) on a simulated clock, against the test W&B server:
every request counted is a real one, and no test waits for real time to pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent_lib.backends.base import Lease
from agent_lib.backends.wandb import WandbBackend
from agent_lib.spec import QueueItem
from agent_lib.states import Phase
from tests.wandb.conftest import CLIENT_OPTIONS, ENTITY
from tests.wandb.jobs import wandb_job
from tests.wandb.server import FakeWandb

WANDB_AGENT_IDLE_RATE = 0.23  # W&B 0.31's agent, idle, one queue (issue 15)
POLL_INTERVAL = 0.1  # the agent's defaults
HEARTBEAT_INTERVAL = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked(server: FakeWandb) -> Iterator[tuple[WandbBackend, Clock]]:
    clock = Clock()
    backend = WandbBackend(server.base_url, **CLIENT_OPTIONS)
    backend._clock = clock  # type: ignore[method-assign]
    backend._active_at = clock()  # the agent starts now
    yield backend, clock
    backend.close()


def drive(
    backend: WandbBackend, clock: Clock, agent_id: str, seconds: float
) -> list[tuple[float, str]]:
    """Run the agent's calling pattern for `seconds`; returns what was popped, and when."""
    popped: list[tuple[float, str]] = []
    end = clock.now + seconds
    next_tick = clock.now
    while clock.now < end:
        if clock.now >= next_tick:
            backend.get_launch_agent(agent_id)
            next_tick = clock.now + HEARTBEAT_INTERVAL
        lease = backend.pop_from_run_queue("default", ENTITY, "model-registry", agent_id)
        if lease is not None:
            popped.append((clock.now, lease.item_id))
        clock.now = round(clock.now + POLL_INTERVAL, 6)
    return popped


def register(backend: WandbBackend) -> str:
    config = {"idle_poll_interval": 10.0, "quick_poll_seconds": 60.0}
    return backend.create_launch_agent(ENTITY, "model-registry", ["default"], "h", config, "v")


def test_an_idle_agent_stays_within_wandbs_request_budget(
    server: FakeWandb, clocked: tuple[WandbBackend, Clock]
) -> None:
    backend, clock = clocked
    agent_id = register(backend)
    drive(backend, clock, agent_id, 60.0)  # the quick window after the start
    before = len(server.calls)

    drive(backend, clock, agent_id, 600.0)

    rate = (len(server.calls) - before) / 600.0
    assert rate <= WANDB_AGENT_IDLE_RATE
    assert rate == pytest.approx(0.2, abs=0.01)  # a pop and a record read every 10 s


def test_after_activity_it_polls_quickly_then_backs_off(
    server: FakeWandb, clocked: tuple[WandbBackend, Clock]
) -> None:
    backend, clock = clocked
    agent_id = register(backend)
    start = len(server.calls)
    drive(backend, clock, agent_id, 60.0)
    quick = len(server.calls) - start
    assert 60 <= quick <= 75  # about one pop a second, plus the record every heartbeat

    drive(backend, clock, agent_id, 100.0)  # idle: backed off
    first = server.push("default", wandb_job())
    found = drive(backend, clock, agent_id, 10.0)
    assert [item for _, item in found] == [first]  # within one idle interval, as W&B's

    second = server.push("default", wandb_job())  # right after an item: found within ~1 s
    pushed_at = clock.now
    found = drive(backend, clock, agent_id, 2.0)
    assert [item for _, item in found] == [second]
    assert found[0][0] - pushed_at <= 1.0


def test_the_config_sets_the_idle_interval(
    server: FakeWandb, clocked: tuple[WandbBackend, Clock]
) -> None:
    backend, clock = clocked
    config = {"idle_poll_interval": 30.0, "quick_poll_seconds": 0.0}
    agent_id = backend.create_launch_agent(ENTITY, "model-registry", ["default"], "h", config, "v")
    before = len(server.calls)

    drive(backend, clock, agent_id, 300.0)

    assert (len(server.calls) - before) / 300.0 == pytest.approx(2 / 30, abs=0.01)


def test_a_job_end_makes_the_next_look_immediate(
    server: FakeWandb, clocked: tuple[WandbBackend, Clock]
) -> None:
    backend, clock = clocked
    agent_id = register(backend)
    drive(backend, clock, agent_id, 100.0)  # idle: the queue is next asked up to 10 s later
    waiting = server.push("default", wandb_job())
    ended = server.push("default", wandb_job())
    lease = Lease(QueueItem(ended, "default", {}), agent_id)

    backend.fail_run_queue_item(lease, "a job ended", Phase.RUN)  # a slot frees
    popped = backend.pop_from_run_queue("default", ENTITY, "model-registry", agent_id)

    assert popped is not None and popped.item_id == waiting
