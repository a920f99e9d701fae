"""Deploy the agent's deployments to a work pool, for a worker to run.

    prefect work-pool create launch-agent --type process
    python -m deployments.deploy --pool launch-agent --queues default --max-jobs 4
    prefect worker start --pool launch-agent

The same three deployments as `python -m deployments.serve` (agent, drain, submit), with
the same schedules, limits and automations. Where the worker finds the code:
- by default, this checkout (a worker on this machine);
- `--from-git URL [--branch NAME]`: each flow run clones the project's repository (a
  worker on another machine; it needs git and the project's dependencies installed).
  A private repository takes a URL with a token, or a Prefect Secret block via
  `prefect.yaml` (deployments/prefect.yaml shows the step).

`deployments/prefect.yaml` is the declarative equivalent for `prefect deploy`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect.runner.storage import GitRepository

from deployments.automations import HEARTBEAT_SECONDS
from deployments.serve import (
    HEARTBEAT_VARIABLE,
    add_agent_arguments,
    agent_parameters,
    build_deployments,
    full_name,
    set_up_automations,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.deploy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--pool", required=True, help="the work pool (e.g. a process pool)")
    parser.add_argument(
        "--from-git",
        metavar="URL",
        help="clone the project from this git repository at each run (default: this checkout)",
    )
    parser.add_argument("--branch", help="with --from-git: the branch (default: the remote's)")
    add_agent_arguments(parser)
    return parser.parse_args(argv)


def source_of(args: argparse.Namespace) -> str | GitRepository:
    if args.from_git:
        return GitRepository(url=args.from_git, branch=args.branch)
    return str(PROJECT_ROOT)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    deployments = build_deployments(
        agent_parameters(args), args.restart_every, args.drain_cron, args.timezone, source_of(args)
    )
    for deployment in deployments:
        # Heartbeats every 30 s (Prefect's minimum; its default is 180): the crash
        # automation sets a run that stops sending them to Crashed.
        deployment.job_variables = {"env": {HEARTBEAT_VARIABLE: str(HEARTBEAT_SECONDS)}}
        deployment.apply(work_pool_name=args.pool)
        print(f"deployed {full_name(deployment)} to work pool {args.pool!r}")
    set_up_automations(deployments, args)


if __name__ == "__main__":
    main()
