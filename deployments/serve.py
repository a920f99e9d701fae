"""Serve the agent's deployments from this process: no work pool, no Docker.

    python -m deployments.serve --queues default --max-jobs 4

Three deployments, overridable from the command line (and their parameters per run in
the UI):
- `launch-agent/agent`: the long-lived agent. A deployment concurrency limit of 1
  (CANCEL_NEW) makes a second run end Cancelled instead of starting a second agent.
  There is no polling schedule by default. What keeps exactly one agent alive:
  * at start, this process starts an agent run unless one is scheduled, pending or
    running (not with `--restart-every`, whose schedule starts it; nor `--no-start`);
  * its runs send heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, 30 s unless set), and an
    automation sets a run that stopped sending them for `--crash-after` seconds (its
    process was killed, its machine lost) to Crashed, which frees the concurrency slot at
    once rather than when Prefect's slot lease expires (about 5.5 min);
  * a second automation starts a new agent run when one ends Completed (a hand-over,
    stop_after_jobs / stop_after_hours) or Crashed; not Failed (a restart loop) nor
    Cancelled (how a person stops the agent).
  The automations are created or updated at each start (see deployments/automations.py).
  Trade-off: the old shape, an interval schedule every 5 minutes, added a Cancelled run
  at every tick while the agent ran (288 a day) and needed nothing but the scheduler; the
  new one adds no run but relies on the server's triggers service (on by default,
  PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED). `--restart-every SECONDS` brings back a
  safety-net interval schedule (one Cancelled run per tick while an agent runs), e.g.
  86400 for one a day. ENQUEUE instead of CANCEL_NEW is no answer: the queued runs pile
  up behind the one that never ends.
- `drain/drain`: on a cron schedule, pops until the queues are empty, waits, exits
  (watched for crashes too).
- `submit/submit`: no schedule; run it from the UI (Run -> Custom run) to push one job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any, cast

from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.runner.storage import GitRepository
from prefect.schedules import Cron, Interval

from deployments.automations import DEFAULT_CRASH_AFTER, HEARTBEAT_SECONDS, setup
from flows import drain, launch_agent, submit

AGENT_DEPLOYMENT = "agent"
DRAIN_DEPLOYMENT = "drain"
SUBMIT_DEPLOYMENT = "submit"
DEFAULT_DRAIN_CRON = "0 * * * *"
HEARTBEAT_VARIABLE = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
ENTRYPOINTS = (
    "flows/agent_flow.py:launch_agent",
    "flows/agent_flow.py:drain",
    "flows/submit.py:submit",
)
ONE_AT_A_TIME = ConcurrencyLimitConfig(
    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
)


def build_deployments(
    parameters: dict[str, Any] | None = None,
    restart_every: float | None = None,
    drain_cron: str = DEFAULT_DRAIN_CRON,
    timezone: str = "UTC",
    source: str | GitRepository | None = None,
) -> list[RunnerDeployment]:
    """The agent, drain and submit deployments, with their schedules and limits.

    `source` (a folder or a git repository) is where a worker finds the flows' code; None
    serves them from this process. Call it from synchronous code: Prefect's
    `to_deployment` returns a coroutine when called inside a running event loop.
    """
    agent_flow, drain_flow, submit_flow = (
        (launch_agent, drain, submit) if source is None else flows_from(source)
    )
    params = {k: v for k, v in (parameters or {}).items() if v is not None}
    drain_params = {
        k: v for k, v in params.items() if k not in ("stop_after_jobs", "stop_after_hours")
    }
    submit_params = {k: v for k, v in params.items() if k in ("backend_url", "config_file")}
    agent = agent_flow.to_deployment(
        name=AGENT_DEPLOYMENT,
        parameters=params,
        schedule=Interval(restart_every) if restart_every else None,
        concurrency_limit=ONE_AT_A_TIME,
        description=(
            "The long-lived launch agent: one at a time; restarted after a hand-over or a "
            "crash by the `launch-agent/agent: restart` automation."
        ),
        tags=["launch-agent"],
    )
    drainer = drain_flow.to_deployment(
        name=DRAIN_DEPLOYMENT,
        parameters=drain_params,
        schedule=Cron(drain_cron, timezone=timezone),
        concurrency_limit=ONE_AT_A_TIME,
        description="Empties the queues on a cron schedule, then exits.",
        tags=["launch-agent"],
    )
    submitter = submit_flow.to_deployment(
        name=SUBMIT_DEPLOYMENT,
        parameters=submit_params,
        description="Pushes one job to a launch queue: Run -> Custom run, fill in the job.",
        tags=["launch-agent"],
    )
    return [cast(RunnerDeployment, d) for d in (agent, drainer, submitter)]


def flows_from(source: str | GitRepository) -> tuple[Flow[..., Any], ...]:
    """The agent, drain and submit flows as a worker loads them from `source`."""
    # Synchronous here (from_source returns a coroutine only inside a running loop).
    return tuple(cast(Flow[..., Any], Flow.from_source(source, e)) for e in ENTRYPOINTS)


def full_name(deployment: RunnerDeployment) -> str:
    return f"{deployment.flow_name}/{deployment.name}"


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's parameters and the schedules and automations, as serve and deploy take them."""
    parser.add_argument("--queues", help="comma-separated queue names (default: from config)")
    parser.add_argument("--max-jobs", type=int, help="jobs at once (-1: unlimited)")
    parser.add_argument("--backend-url", help="sqlite:///PATH or postgresql://...")
    parser.add_argument("--config-file", help="the agent's launch-config.yaml")
    parser.add_argument("--on-cancel", choices=["requeue", "finish"], help="running jobs on cancel")
    parser.add_argument("--stop-after-jobs", type=int, help="hand over after this many jobs")
    parser.add_argument("--stop-after-hours", type=float, help="hand over after this long")
    parser.add_argument(
        "--restart-every",
        type=float,
        default=None,
        help="also try to (re)start the agent every this many seconds (default: never; "
        "each try while an agent runs ends Cancelled)",
    )
    parser.add_argument(
        "--crash-after",
        type=float,
        default=DEFAULT_CRASH_AFTER,
        help="seconds without a heartbeat before an agent or drain run is set to Crashed "
        f"(default {DEFAULT_CRASH_AFTER:.0f}; keep it well above the heartbeat period)",
    )
    parser.add_argument(
        "--no-start",
        action="store_true",
        help="don't start an agent run now (implied by --restart-every)",
    )
    parser.add_argument(
        "--no-automations",
        action="store_true",
        help="don't create or update the crash and restart automations (nor start the agent)",
    )
    parser.add_argument(
        "--drain-cron",
        default=DEFAULT_DRAIN_CRON,
        help=f"drain schedule (default {DEFAULT_DRAIN_CRON!r})",
    )
    parser.add_argument("--timezone", default="UTC", help="time zone of the drain cron")


def agent_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The agent flow's parameters from the command line (None: the flow's default)."""
    return {
        "queues": args.queues.split(",") if args.queues else None,
        "max_jobs": args.max_jobs,
        "backend_url": args.backend_url,
        "config_file": args.config_file,
        "on_cancel": args.on_cancel,
        "stop_after_jobs": args.stop_after_jobs,
        "stop_after_hours": args.stop_after_hours,
    }


def set_up_automations(deployments: list[RunnerDeployment], args: argparse.Namespace) -> None:
    """Crash detection and restart for the agent and drain deployments; start the agent
    unless asked not to (with --restart-every its schedule starts it: starting one here
    as well would only add a run that ends Cancelled)."""
    if args.no_automations:
        return
    agent, drainer, _ = deployments
    start = not args.no_start and not args.restart_every
    asyncio.run(setup(full_name(agent), [full_name(drainer)], args.crash_after, start=start))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.serve", description=__doc__.split("\n")[0]
    )
    add_agent_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The flow runs are this process's children: they heartbeat at this period (Prefect's
    # minimum is 30 s, its default 180 s), which the crash automation watches.
    os.environ.setdefault(HEARTBEAT_VARIABLE, str(HEARTBEAT_SECONDS))
    deployments = build_deployments(
        agent_parameters(args), args.restart_every, args.drain_cron, args.timezone
    )
    for deployment in deployments:
        deployment.apply()
    set_up_automations(deployments, args)
    serve(*deployments)


if __name__ == "__main__":
    main()
