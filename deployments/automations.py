"""Prefect automations that keep exactly one agent alive, without a polling schedule.

    python -m deployments.automations [--crash-after 90] [--no-start]

Two automations, evaluated by the Prefect server's triggers service (on by default:
`PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED`), created or updated by name, so running this
again (or `python -m deployments.serve`, which calls it at start) is harmless:

- `<flow>/<deployment>: crashed when heartbeats stop`, for the agent and drain deployments:
  a flow run sends a `prefect.flow-run.heartbeat` event every
  `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (30 s recommended for the serving or worker
  process; Prefect's minimum is 30, its default 180). When a run of the deployment has sent
  a heartbeat (or gone Running) and then no flow-run event for `--crash-after` seconds (its process,
  machine or container is gone), the run is set to CRASHED. That frees the deployment's
  concurrency slot at once, instead of when its lease expires (minutes later).
- `launch-agent/agent: restart`: when an agent run ends COMPLETED (a hand-over after
  stop_after_jobs / stop_after_hours) or CRASHED, start a new run of the agent deployment.
  Not after FAILED (an agent that fails at start would be restarted in a loop: that needs
  a person) nor CANCELLED (cancelling is how a person stops the agent).

With `prefect deploy` (deployments/prefect.yaml) run this once after deploying, with
PREFECT_API_URL set; it also starts the first agent run unless one is already scheduled
or running (`--no-start`: don't).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from datetime import timedelta
from uuid import UUID

from prefect import get_client
from prefect.automations import (
    Automation,
    AutomationCore,
    ChangeFlowRunState,
    EventTrigger,
    Posture,
    RunDeployment,
)
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import DeploymentResponse

AGENT = "launch-agent/agent"
DRAIN = "drain/drain"
HEARTBEAT_SECONDS = 30
DEFAULT_CRASH_AFTER = 90.0
# A run waiting for a worker or a serve process, or running: the agent needs no new run.
ACTIVE_STATES = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]


def crash_automation(deployment: DeploymentResponse, flow_name: str, within: float) -> Automation:
    """CRASHED for the deployment's runs that sent a heartbeat, then nothing for `within` s."""
    return Automation(
        name=f"{flow_name}/{deployment.name}: crashed when heartbeats stop",
        description=(
            f"A run of {flow_name}/{deployment.name} that stops sending heartbeats for "
            f"{within:.0f} s is set to Crashed, which frees its concurrency slot."
        ),
        trigger=EventTrigger(
            posture=Posture.Proactive,
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "deployment",
                "prefect.resource.id": f"prefect.deployment.{deployment.id}",
            },
            # From its first heartbeat, or from Running if killed before sending one.
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Running"},
            # Any event of the run: a heartbeat, or a state change (a final one ends it).
            expect={"prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            threshold=1,
            within=timedelta(seconds=within),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {within:.0f} s: its process is gone",
            )
        ],
    )


def restart_automation(deployment: DeploymentResponse, flow_name: str) -> Automation:
    """A new run of the deployment when one ends Completed (hand-over) or Crashed."""
    return Automation(
        name=f"{flow_name}/{deployment.name}: restart",
        description=(
            f"Starts {flow_name}/{deployment.name} again when its run hands over "
            "(Completed) or crashes; not after Failed or Cancelled."
        ),
        trigger=EventTrigger(
            posture=Posture.Reactive,
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "deployment",
                "prefect.resource.id": f"prefect.deployment.{deployment.id}",
            },
            expect={"prefect.flow-run.Completed", "prefect.flow-run.Crashed"},
            threshold=1,
            within=timedelta(0),
        ),
        actions=[RunDeployment(source="selected", deployment_id=deployment.id)],
    )


async def upsert(client: PrefectClient, automation: Automation) -> UUID:
    """Create the automation, or update the one of that name (and drop duplicates)."""
    existing = await client.read_automations_by_name(automation.name)
    if not existing:
        return await client.create_automation(
            AutomationCore(**automation.model_dump(exclude={"id"}))
        )
    first, *extra = existing
    # The update endpoint refuses `owner_resource` (as prefect's own Automation.update).
    core = AutomationCore(**automation.model_dump(exclude={"id", "owner_resource"}))
    await client.update_automation(first.id, core)
    for duplicate in extra:
        await client.delete_automation(duplicate.id)
    return first.id


async def ensure_automations(
    client: PrefectClient,
    agent: DeploymentResponse,
    others: Iterable[DeploymentResponse] = (),
    crash_after: float = DEFAULT_CRASH_AFTER,
) -> list[UUID]:
    """Crash detection for every deployment given, restart for the agent's; their ids."""
    ids = []
    for deployment in [agent, *others]:
        flow = await client.read_flow(deployment.flow_id)
        ids.append(await upsert(client, crash_automation(deployment, flow.name, crash_after)))
        if deployment.id == agent.id:
            ids.append(await upsert(client, restart_automation(deployment, flow.name)))
    return ids


async def ensure_one_run(client: PrefectClient, deployment: DeploymentResponse) -> UUID | None:
    """Start a run of the deployment unless one is scheduled, pending or running."""
    active = await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ACTIVE_STATES))
        ),
        limit=1,
    )
    if active:
        return None
    run = await client.create_flow_run_from_deployment(deployment.id)
    return run.id


async def setup(
    agent_name: str = AGENT,
    other_names: Iterable[str] = (DRAIN,),
    crash_after: float = DEFAULT_CRASH_AFTER,
    start: bool = True,
) -> None:
    async with get_client() as client:
        agent = await client.read_deployment_by_name(agent_name)
        others = [await client.read_deployment_by_name(name) for name in other_names]
        await ensure_automations(client, agent, others, crash_after)
        if start:
            started = await ensure_one_run(client, agent)
            print(f"started agent run {started}" if started else "an agent run is active")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.automations", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--agent", default=AGENT, help=f"agent deployment (default {AGENT})")
    parser.add_argument(
        "--also",
        action="append",
        help=f"another deployment to watch for crashes (default {DRAIN}; repeatable)",
    )
    parser.add_argument(
        "--crash-after",
        type=float,
        default=DEFAULT_CRASH_AFTER,
        help="seconds without a heartbeat before a run is Crashed (default 90; keep it "
        "well above PREFECT_FLOWS_HEARTBEAT_FREQUENCY)",
    )
    parser.add_argument("--no-start", action="store_true", help="don't start an agent run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    others = args.also if args.also is not None else [DRAIN]
    asyncio.run(setup(args.agent, others, args.crash_after, start=not args.no_start))


if __name__ == "__main__":
    main()
