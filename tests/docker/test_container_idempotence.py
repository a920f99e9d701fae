"""`run` and `find` are idempotent per job, on a real engine: jobs outlive their agent.

A restarted agent calls `run(context)` again for an item it held; it must get the container
that is going (or that ended while no agent watched), never a second one. The ended container
stays until `cleanup()`, since until the item is settled it holds the job's exit code.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent_lib.files import job_dir_for
from agent_lib.runners.base import LaunchContext
from agent_lib.runners.local_container import (
    ContainerRun,
    LocalContainerRunner,
    container_name,
)
from agent_lib.spec import LaunchSpec
from agent_lib.states import RunState
from tests.docker.conftest import Harness

pytestmark = pytest.mark.timeout(120)

DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def make_context(
    harness: Harness, image: str, script: str, resource_args: dict[str, Any] | None = None
) -> LaunchContext:
    """A job's context as the agent builds it (labels included, so the harness sees it)."""
    item_id, run_id = uuid.uuid4().hex[:12], uuid.uuid4().hex[:8]
    job_dir = job_dir_for(harness.data_dir / "jobs", item_id, run_id)
    command = ["sh", "-c", script]
    return LaunchContext(
        item_id=item_id,
        queue=harness.queue,
        run_id=run_id,
        spec=LaunchSpec.parse(
            {"docker": {"docker_image": image}, "overrides": {"entry_point": command}}
        ),
        command=command,
        image=image,
        env={},
        job_dir=job_dir,
        log_path=job_dir / "output.log",
        resource_args=dict(resource_args or {}),
        labels={
            "launch-agent.agent": "test-agent",
            "launch-agent.queue": harness.queue,
            "launch-agent.item": item_id,
            "launch-agent.run": run_id,
        },
    )


def runner_for(harness: Harness, **config: Any) -> LocalContainerRunner:
    """A fresh runner, as a restarted agent would make (nothing shared but the engine)."""
    return LocalContainerRunner(harness.agent_config(**config))


def mount(folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"volume": [f"{folder}:/shared"]}


# -- the name rule (no engine needed) --
def test_container_names_are_per_job_per_data_dir_and_valid(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    name = container_name(jobs, "item1", "run1")
    assert name == container_name(jobs, "item1", "run1")
    assert re.fullmatch(r"la-[0-9a-f]{8}-item1-run1", name)
    assert name != container_name(tmp_path / "other" / "jobs", "item1", "run1")
    assert name != container_name(jobs, "item1", "run2")
    # Ids Docker would refuse, or that blur where the item ends, get a hash of the real ids.
    odd = [("a/b", "r"), ("a_b", "r"), ("a-b", "c"), ("a", "b-c"), ("é", "r"), ("x" * 300, "r")]
    names = [container_name(jobs, item, run) for item, run in odd]
    assert len(set(names)) == len(names)
    for made in names:
        assert DOCKER_NAME.fullmatch(made) and len(made) <= 200, made


# -- on the engine --
def test_find_is_none_before_any_run(harness: Harness, busybox: str) -> None:
    context = make_context(harness, busybox, "exit 0")
    assert asyncio.run(runner_for(harness).find(context)) is None
    assert harness.containers(item=context.item_id) == []


def test_run_twice_starts_one_container(harness: Harness, busybox: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    context = make_context(
        harness, busybox, "echo started >> /shared/starts; sleep 2; exit 4", mount(shared)
    )

    async def scenario() -> list[tuple[ContainerRun, int | None]]:
        config = {"container_allow": ["volume"]}
        # Racing callers: whoever loses the create (409) gets the winner's container.
        racing = await asyncio.gather(
            *(runner_for(harness, **config).run(context) for _ in range(3))
        )
        # And a restarted agent's call while it runs.
        handles = [*racing, await runner_for(harness, **config).run(context)]
        statuses = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 60)
        return [(h, s.exit_code) for h, s in zip(handles, statuses, strict=True)]

    results = asyncio.run(scenario())
    assert {handle.container_id for handle, _ in results} == {results[0][0].container_id}
    assert [code for _, code in results] == [4, 4, 4, 4]
    assert (shared / "starts").read_text() == "started\n"
    assert len(harness.containers(item=context.item_id)) == 1


def test_find_after_the_end_gives_the_exit_code_until_cleanup(
    harness: Harness, busybox: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    context = make_context(
        harness, busybox, "echo started >> /shared/starts; echo hello; exit 3", mount(shared)
    )
    config = {"container_allow": ["volume"]}

    async def scenario() -> None:
        started = await runner_for(harness, **config).run(context)
        first = await asyncio.wait_for(started.wait(), 60)
        assert (first.state, first.exit_code) == (RunState.FAILED, 3)
        (container,) = harness.containers(item=context.item_id)
        assert container.status == "exited"  # kept until cleanup: a restart needs it

        # A restarted agent: a new runner finds the ended job and its exit code at once.
        found = await runner_for(harness, **config).find(context)
        assert found is not None and found.container_id == started.container_id
        asked = time.monotonic()
        again = await asyncio.wait_for(found.wait(), 30)
        assert time.monotonic() - asked < 10
        assert (again.state, again.exit_code) == (RunState.FAILED, 3)
        # `run` too returns the ended container, and does not start it again.
        rerun = await runner_for(harness, **config).run(context)
        assert rerun.container_id == started.container_id
        assert (await asyncio.wait_for(rerun.wait(), 30)).exit_code == 3

        await found.cleanup()
        await found.cleanup()  # idempotent
        assert await runner_for(harness, **config).find(context) is None

    asyncio.run(scenario())
    assert harness.containers(item=context.item_id) == []
    assert (shared / "starts").read_text() == "started\n"
    assert (context.log_path).read_text().count("hello") == 1  # rewritten, not appended


def test_cleanup_keeps_the_container_when_configured(harness: Harness, busybox: str) -> None:
    context = make_context(harness, busybox, "exit 0")

    async def scenario() -> None:
        run = await runner_for(harness, remove_containers=False).run(context)
        assert (await asyncio.wait_for(run.wait(), 60)).state is RunState.FINISHED
        await run.cleanup()

    asyncio.run(scenario())
    assert len(harness.containers(item=context.item_id)) == 1


def test_a_container_only_created_is_started_by_run(
    harness: Harness, busybox: str, docker_client: Any
) -> None:
    # The agent died between create and start: the container is there, never started.
    context = make_context(harness, busybox, "echo from created; exit 6")
    runner = runner_for(harness)
    docker_client.containers.create(
        busybox,
        name=runner.name_for(context),
        labels=context.labels,
        entrypoint=["sh", "-c", "echo from created; exit 6"],
    )

    async def scenario() -> None:
        # Not a started run: find says so (and starts nothing), so the agent launches...
        assert await runner.find(context) is None
        (container,) = harness.containers(item=context.item_id)
        assert container.status == "created"
        # ...and run starts that container rather than making a second one.
        run = await runner_for(harness).run(context)
        assert run.container_id == container.id
        status = await asyncio.wait_for(run.wait(), 60)
        assert (status.state, status.exit_code) == (RunState.FAILED, 6)
        await run.cleanup()

    asyncio.run(scenario())
    assert "from created" in context.log_path.read_text()
    assert harness.containers(item=context.item_id) == []


def test_a_container_removed_while_watched_fails_clearly(
    harness: Harness, busybox: str, docker_client: Any
) -> None:
    context = make_context(harness, busybox, "exec sleep 600")

    async def scenario() -> None:
        run = await runner_for(harness).run(context)
        while not [c for c in harness.containers(item=context.item_id) if c.status == "running"]:
            await asyncio.sleep(0.1)
        await run.cleanup()  # never kills a running job
        assert len(harness.containers(item=context.item_id)) == 1
        # `docker rm -f`: the engine kills it, then removes it. Which of the two the watcher
        # sees first is a race; either way the run fails at once with a reason that says so.
        await asyncio.to_thread(docker_client.api.remove_container, run.container_id, force=True)
        status = await asyncio.wait_for(run.wait(), 30)
        assert status.state is RunState.FAILED
        reason = status.reason or ""
        assert "removed by someone else" in reason or "SIGKILL" in reason, status
        await run.cleanup()  # nothing left to remove: no error

    asyncio.run(scenario())
    assert harness.containers(item=context.item_id) == []


def test_a_found_container_removed_before_watching_fails_clearly(
    harness: Harness, busybox: str, docker_client: Any
) -> None:
    context = make_context(harness, busybox, "exit 0")

    async def scenario() -> None:
        started = await runner_for(harness).run(context)
        await asyncio.wait_for(started.wait(), 60)
        found = await runner_for(harness).find(context)
        assert found is not None
        await asyncio.to_thread(docker_client.api.remove_container, found.container_id)
        status = await asyncio.wait_for(found.wait(), 30)
        assert (status.state, status.reason) == (
            RunState.FAILED,
            "the container was removed by someone else",
        )
        await found.cleanup()

    asyncio.run(scenario())
