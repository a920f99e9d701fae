"""Serve the agent's deployments from this process: no work pool, no Docker.

    python -m deployments.serve --queues default --max-jobs 4

Two deployments, both overridable from the command line (and their parameters per run
in the UI):
- `launch-agent/agent`: the long-lived agent. An interval schedule tries to start it
  every `--restart-every` seconds; a deployment concurrency limit of 1 with the CANCEL_NEW
  collision strategy drops the new run while one is running, so Prefect keeps exactly one
  agent alive (and restarts it after a crash or a hand-over).
- `drain/drain`: on a cron schedule, pops until the queues are empty, waits, exits.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Interval

from flows import drain, launch_agent

AGENT_DEPLOYMENT = "agent"
DRAIN_DEPLOYMENT = "drain"
DEFAULT_RESTART_EVERY = 300.0
DEFAULT_DRAIN_CRON = "0 * * * *"
ONE_AT_A_TIME = ConcurrencyLimitConfig(
    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
)


def build_deployments(
    parameters: dict[str, Any] | None = None,
    restart_every: float = DEFAULT_RESTART_EVERY,
    drain_cron: str = DEFAULT_DRAIN_CRON,
    timezone: str = "UTC",
) -> list[RunnerDeployment]:
    """The agent and drain deployments, with their schedules and concurrency limits.

    Call it from synchronous code: Prefect's `to_deployment` returns a coroutine when
    called inside a running event loop.
    """
    params = {k: v for k, v in (parameters or {}).items() if v is not None}
    drain_params = {
        k: v for k, v in params.items() if k not in ("stop_after_jobs", "stop_after_hours")
    }
    agent = launch_agent.to_deployment(
        name=AGENT_DEPLOYMENT,
        parameters=params,
        schedule=Interval(restart_every),
        concurrency_limit=ONE_AT_A_TIME,
        description="The long-lived launch agent; the schedule restarts it if it is not running.",
        tags=["launch-agent"],
    )
    drainer = drain.to_deployment(
        name=DRAIN_DEPLOYMENT,
        parameters=drain_params,
        schedule=Cron(drain_cron, timezone=timezone),
        concurrency_limit=ONE_AT_A_TIME,
        description="Empties the queues on a cron schedule, then exits.",
        tags=["launch-agent"],
    )
    return [cast(RunnerDeployment, agent), cast(RunnerDeployment, drainer)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.serve", description=__doc__.split("\n")[0]
    )
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
        default=DEFAULT_RESTART_EVERY,
        help="seconds between attempts to (re)start the agent (default 300)",
    )
    parser.add_argument(
        "--drain-cron",
        default=DEFAULT_DRAIN_CRON,
        help=f"drain schedule (default {DEFAULT_DRAIN_CRON!r})",
    )
    parser.add_argument("--timezone", default="UTC", help="time zone of the drain cron")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    parameters = {
        "queues": args.queues.split(",") if args.queues else None,
        "max_jobs": args.max_jobs,
        "backend_url": args.backend_url,
        "config_file": args.config_file,
        "on_cancel": args.on_cancel,
        "stop_after_jobs": args.stop_after_jobs,
        "stop_after_hours": args.stop_after_hours,
    }
    serve(*build_deployments(parameters, args.restart_every, args.drain_cron, args.timezone))


if __name__ == "__main__":
    main()
