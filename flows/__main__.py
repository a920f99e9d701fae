"""`launch-agent-flow` / `python -m flows`: run the agent as a Prefect flow in this process.

Set PREFECT_API_URL to a running server (see README) so the runs show in its UI; options
not given here come from the agent's config file and LAUNCH_AGENT_* variables.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import Sequence
from typing import Any

from prefect import State

from flows.agent_flow import drain, launch_agent
from flows.cancel import sigterm_delivered


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch-agent-flow",
        description="Run the launch agent as a Prefect flow: each item becomes a task_run_job "
        "subflow run whose steps are task runs.",
    )
    parser.add_argument("queues", nargs="*", help="queues to serve (default: the config's)")
    parser.add_argument("-j", "--max-jobs", type=int, help="jobs at once (-1: unlimited)")
    parser.add_argument("--backend", metavar="URL", help="queue backend URL")
    parser.add_argument("-c", "--config", metavar="FILE", help="agent config YAML")
    parser.add_argument(
        "--on-cancel",
        choices=["requeue", "finish"],
        default="requeue",
        help="when the flow run is cancelled: requeue running jobs (default) or let them finish",
    )
    parser.add_argument(
        "--stop-after-jobs",
        type=int,
        metavar="N",
        help="hand over after N jobs (finish them, then exit)",
    )
    parser.add_argument(
        "--drain", action="store_true", help="run the 'drain' flow: exit once the queues are empty"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common: dict[str, Any] = {
        "queues": args.queues or None,
        "max_jobs": args.max_jobs,
        "backend_url": args.backend,
        "config_file": args.config,
        "on_cancel": args.on_cancel,
    }
    state = _run_in_worker_thread(args.drain, args.stop_after_jobs, common)
    return 0 if state is not None and (state.is_completed() or state.is_cancelled()) else 1


def _run_in_worker_thread(
    drain_only: bool, stop_after_jobs: int | None, common: dict[str, Any]
) -> State[Any] | None:
    """Run the flow in a worker thread, so that SIGTERM and Ctrl-C stay with the main
    thread (flows.cancel.deliver_sigterm) rather than with Prefect's engine, which would
    otherwise crash the run and leave its jobs to the next start."""
    result: list[State[Any]] = []

    def body() -> None:
        result.append(asyncio.run(_run(drain_only, stop_after_jobs, common)))

    worker = threading.Thread(target=body, name="launch-agent-flow")
    with sigterm_delivered():
        worker.start()
        while worker.is_alive():
            worker.join(0.2)  # wakes for signals: their handlers run in this thread
    return result[0] if result else None


async def _run(drain_only: bool, stop_after_jobs: int | None, common: dict[str, Any]) -> Any:
    if drain_only:
        return await drain(**common, return_state=True)
    return await launch_agent(**common, stop_after_jobs=stop_after_jobs, return_state=True)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
