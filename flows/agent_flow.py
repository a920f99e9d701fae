"""The `launch-agent` flow (long-lived) and the `drain` flow (empty the queues, exit).

Both run agent_lib's own `LaunchAgent.loop()` inside one flow run, with `PrefectHooks`
making each item a `task_run_job` subflow run of it. Parameters cover what people change
per deployment (queues, max_jobs, backend, config file, hand-over); any other config key
goes in `settings`, and everything else comes from the config file and the environment,
as with the plain agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio.to_thread
from prefect import State, flow
from prefect.context import AsyncClientContext, FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed

from agent_lib import AgentConfig, LaunchAgent, open_backend
from agent_lib.job import STOP
from flows.artifacts import status_artifact, status_key, status_markdown
from flows.cancel import (
    run_is_cancelling,
    sigterm_delivered,
    sigterm_stops,
    watching_for_cancel,
    watching_job_cancels,
)
from flows.hooks import PrefectHooks
from flows.logs import route_agent_logs

log = logging.getLogger("agent_lib.flows")

OnCancel = Literal["requeue", "finish"]
CANCEL_CHECK_SECONDS = 1.0


def agent_run_name() -> str:
    """'agent on <queues>' (or 'drain <queues>'), so runs are told apart in the UI."""
    params = flow_run.parameters
    queues = ",".join(params.get("queues") or []) or "configured queues"
    verb = "drain" if flow_run.flow_name == "drain" else "agent on"
    return f"{verb} {queues}"


def load_config(
    queues: list[str] | None,
    max_jobs: int | None,
    backend_url: str | None,
    config_file: str | None,
    stop_after_jobs: int | None,
    stop_after_hours: float | None,
    settings: dict[str, Any] | None,
    exit_when_idle: bool | None,
) -> AgentConfig:
    """The agent's config: these parameters over `settings`, the environment, the file."""
    overrides: dict[str, Any] = {
        **(settings or {}),
        "queues": queues,
        "max_jobs": max_jobs,
        "backend_url": backend_url,
        "stop_after_jobs": stop_after_jobs,
        "stop_after_seconds": stop_after_hours * 3600 if stop_after_hours else None,
        "exit_when_idle": exit_when_idle,
    }
    return AgentConfig.load(config_file, **overrides)


@contextlib.asynccontextmanager
async def prefect_watch(
    agent: LaunchAgent, hooks: PrefectHooks, on_cancel: OnCancel, status_seconds: float
) -> AsyncIterator[list[str]]:
    """While the agent loops: the status artifact, and cancel / SIGTERM -> clean stop.

    Yields a list that holds "cancelled" once the flow run was cancelled.
    """
    seen: list[str] = []
    requeue = on_cancel == "requeue"

    def cancel() -> None:
        seen.append("cancelled")
        agent.stop(requeue=requeue, reason=f"the flow run was cancelled (on_cancel={on_cancel})")

    def sigterm() -> None:
        agent.stop(requeue=requeue, reason=f"SIGTERM (on_cancel={on_cancel})")

    def cancel_job(item_id: str, run_name: str) -> None:
        job = hooks.running.get(item_id)
        if job is not None:
            job.cancel(STOP, f"stopped from Prefect (its run {run_name!r} was cancelled)")

    def render() -> str:
        state = f"stopping: {agent.stop_reason}" if agent.stopping else "polling"
        running = list(hooks.running.values())
        return status_markdown(agent.name(), state, agent.outcomes, running, agent.config.max_jobs)

    context = FlowRunContext.get()
    run_id = context.flow_run.id if context and context.flow_run else None
    with sigterm_stops(sigterm):
        async with (
            watching_for_cancel(run_id, cancel, CANCEL_CHECK_SECONDS),
            watching_job_cancels(run_id, lambda: bool(hooks.running), cancel_job, 1.0),
            status_artifact(status_key(agent.identity_name), render, status_seconds),
        ):
            yield seen


async def _cancel_requested() -> bool:
    """Whether this flow run was cancelled (a worker's SIGTERM can beat the watcher to
    it): Prefect refuses any state but Cancelled for a run that is CANCELLING."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return False
    try:
        return await run_is_cancelling(context.flow_run.id)
    except Exception as exc:
        log.debug("could not read the agent's flow run state: %s", exc)
        return False


async def run_agent(config: AgentConfig, on_cancel: OnCancel, status_seconds: float) -> State[Any]:
    """Run the agent's loop to its end inside the current flow run; the run's final state.

    On the main thread (a worker's or `serve`'s flow-run process) the agent runs on a
    thread of its own: Prefect arms its SIGTERM handler for every subflow run on the main
    thread, which would crash the agent's run on a cancel (the worker's SIGTERM) instead
    of letting it settle its jobs. The main thread keeps a handler that hands SIGTERM to
    the agent (flows.cancel.deliver_sigterm), as `launch-agent-flow` does.
    """
    if threading.current_thread() is threading.main_thread():
        context = contextvars.copy_context()  # the flow run's context: subflows link to it
        with sigterm_delivered():
            return await anyio.to_thread.run_sync(
                context.run, asyncio.run, _run_agent(config, on_cancel, status_seconds)
            )
    return await _run_agent(config, on_cancel, status_seconds)


async def _run_agent(config: AgentConfig, on_cancel: OnCancel, status_seconds: float) -> State[Any]:
    """The agent's loop, with one Prefect client for its event loop.

    On a thread of its own the agent cannot use the flow run's client (it belongs to the
    other event loop), and every subflow run, cancel check and artifact would open one of
    its own: ~35 ms of CPU each (an SSL context, a connection, a CSRF token request).
    """
    async with AsyncClientContext.get_or_create():
        return await _agent_loop(config, on_cancel, status_seconds)


async def _agent_loop(
    config: AgentConfig, on_cancel: OnCancel, status_seconds: float
) -> State[Any]:
    route_agent_logs()
    api = open_backend(config.resolved_backend_url, config.lease_seconds)
    try:
        hooks = PrefectHooks()
        agent = LaunchAgent(api, config, hooks)
        agent.requeue_on_cancel = on_cancel == "requeue"
        log.info(
            "agent %s started: queues %s, max_jobs %s, jobs in %s",
            agent.name(),
            ", ".join(config.queues),
            config.max_jobs,
            config.jobs_dir,
        )
        async with prefect_watch(agent, hooks, on_cancel, status_seconds) as seen:
            await agent.loop()
    finally:
        api.close()
    done = ", ".join(f"{n} {k}" for k, n in sorted(agent.outcomes.items())) or "no jobs"
    message = f"agent {agent.name()} stopped ({agent.stop_reason}): {done}"
    if hooks.prefect_errors:
        message += f"; {hooks.prefect_errors} Prefect error(s) worked around (see logs)"
    if seen or await _cancel_requested():
        return Cancelled(message=message)
    return Completed(message=message)


@flow(name="launch-agent", flow_run_name=agent_run_name, persist_result=False)
async def launch_agent(
    queues: list[str] | None = None,
    max_jobs: int | None = None,
    backend_url: str | None = None,
    config_file: str | None = None,
    on_cancel: OnCancel = "requeue",
    stop_after_jobs: int | None = None,
    stop_after_hours: float | None = None,
    status_seconds: float = 10.0,
    settings: dict[str, Any] | None = None,
) -> State[Any]:
    """Run the launch agent until stopped; each popped item is a `task_run_job` subflow run.

    Cancelling this run stops the agent: it stops popping and, with on_cancel="requeue",
    cancels its running jobs and puts their items back on their queues (resumed by the
    next agent); with "finish", lets them finish first. stop_after_jobs / stop_after_hours
    hand over: stop popping, finish the jobs, exit (the deployment's schedule starts the
    next agent).
    """
    config = load_config(
        queues,
        max_jobs,
        backend_url,
        config_file,
        stop_after_jobs,
        stop_after_hours,
        settings,
        None,
    )
    return await run_agent(config, on_cancel, status_seconds)


@flow(name="drain", flow_run_name=agent_run_name, persist_result=False)
async def drain(
    queues: list[str] | None = None,
    max_jobs: int | None = None,
    backend_url: str | None = None,
    config_file: str | None = None,
    on_cancel: OnCancel = "requeue",
    status_seconds: float = 10.0,
    settings: dict[str, Any] | None = None,
) -> State[Any]:
    """Pop until the queues are empty, wait for the jobs, exit: for batch sites on a cron."""
    config = load_config(queues, max_jobs, backend_url, config_file, None, None, settings, True)
    return await run_agent(config, on_cancel, status_seconds)
