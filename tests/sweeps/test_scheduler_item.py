"""A sweep as the agent sees it: its scheduler runs our scheduler with the database URL by
environment only, and in flow mode the scheduler and its runs carry `sweep:<id>`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent_lib.backends import SqlBackend
from agent_lib.backends.base import Lease
from agent_lib.hooks import AgentHooks
from agent_lib.job import Job, JobSupport
from agent_lib.spec import QueueItem
from agent_lib.sweeps.config import parse_sweep_config
from agent_lib.sweeps.runs import run_spec, run_template, scheduler_spec
from flows.job_flow import job_tags
from tests.helpers import fast_config


def test_the_scheduler_and_its_runs_are_tagged_with_the_sweep(
    backend: SqlBackend, tmp_path: Path
) -> None:
    config = parse_sweep_config(
        {"method": "grid", "parameters": {"x": {"values": [1]}}, "program": "t.py"}
    )
    support = JobSupport(backend, fast_config(tmp_path), AgentHooks(), "agent", None)
    specs = [
        scheduler_spec("sw1", "default", config),
        run_spec(run_template(config), "sw1", "sw1-0", "run0", {"x": 1}),
    ]
    jobs = []
    for n, spec in enumerate(specs):
        job = Job(Lease(QueueItem(str(n), "default", spec), "agent"), support)
        asyncio.run(job._validate())
        assert "sweep:sw1" in job_tags(job)
        jobs.append(job)

    scheduler, run = (job._context(None) for job in jobs)
    # The agent runs its own scheduler for the item, whatever its command says; the
    # database URL reaches it by environment only, and never reaches a run.
    assert jobs[0].is_scheduler and not jobs[1].is_scheduler
    assert scheduler.command[1:5] == ["-m", "agent_lib.sweeps.scheduler", "--sweep", "sw1"]
    assert scheduler.env["DATABASE_URL"] == backend.url
    assert not any(backend.url in word for word in scheduler.command)
    assert "DATABASE_URL" not in run.env and "DATABASE_URL" not in run.host_env
