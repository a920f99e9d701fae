"""The W&B backend: serves existing Weights & Biases Launch queues over W&B's GraphQL API.

Select it with the backend URL `wandb` (server from WANDB_BASE_URL, default the public
cloud) or `wandb+https://HOST[:PORT]` / `wandb+http://...` (a self-hosted server). The key
comes from WANDB_API_KEY or `.netrc` (see wandb_auth). Queues live in the entity's project
`model-registry`, as W&B keeps them.

Politeness: an idle agent costs W&B no more requests than W&B's own agent (one pop per
queue and one look at the agent's record every 10 s: about 0.2 requests/s with one queue,
W&B's agent about 0.23). For `quick_poll_seconds` (60) after activity (the agent's start, an
item popped, a job's end) queues are polled once a second (`min_poll_interval`) and the
record at each heartbeat, so the next item starts within about a second; after that, every
`idle_poll_interval` (10 s). A queue that just served an item is asked again at once. A
running job asks whether its run was stopped in W&B at most every `stop_check_interval`
(10 s, as W&B's agent does; the job's own SDK sees the stop at once anyway).

Operations W&B has no call for get the meaning W&B gives them:
- heartbeat: none; W&B records an agent's heartbeat when it polls with its agent id.
- release_run_queue_item: none; W&B's lease expiry returns an unacked item to its queue.
- complete_run_queue_item: W&B derives an item's end from its run. Like W&B's agent, a job
  whose run never reached W&B, or stayed `pending` (a sweep's run that never called
  `wandb.init`), fails its item, after asking again with a doubling interval (1, 2, 4 ... s)
  for `run_info_grace_period` (60 s) in case the run is late: "The submitted job exited
  successfully but failed to call wandb.init" (the job finished) or "The submitted run was
  not successfully started" (it was stopped). Otherwise the item would show as claimed
  forever. As in W&B's agent, runs on another entity than the agent's are not checked.
- requeue_run_queue_item: W&B ends the preempted item with its run; the resume is pushed.
W&B registers a new agent at each start, so it has no stable identity to reclaim items
with: a restarted agent does not re-attach the jobs of a W&B queue.
Failure files are not uploaded (W&B's agent keeps them in a hidden run of its own): the
paths sent in `filePaths` are where they are on the agent's host; with none, `filePaths` is
left out, as W&B's client leaves it out.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from datetime import UTC, datetime
from typing import Any

from agent_lib.backends import wandb_ops as ops
from agent_lib.backends.base import AgentRecord, Lease
from agent_lib.backends.wandb_auth import base_url_from, resolve_api_key
from agent_lib.backends.wandb_client import WandbClient
from agent_lib.errors import BackendError, ConfigError
from agent_lib.redact import redact_mapping
from agent_lib.spec import LaunchSpec, QueueItem
from agent_lib.states import AgentStatus, ItemState, Phase

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "model-registry"
# After an empty pop, a queue is asked again no sooner than this while the agent is
# active (the agent's fast local poll interval would otherwise send W&B several requests a
# second per idle queue) ...
DEFAULT_MIN_POLL_INTERVAL = 1.0
# ... for this long after activity (a start, an item popped, a job's end) ...
DEFAULT_QUICK_POLL_SECONDS = 60.0
# ... and then no sooner than this: W&B's own agent polls every 10 s (AGENT_POLLING_INTERVAL).
DEFAULT_IDLE_POLL_INTERVAL = 10.0
# How often a running job asks whether its run was stopped in W&B (W&B's agent: 10 s).
DEFAULT_STOP_CHECK_INTERVAL = 10.0
# How long to look for a job's run after the job ended (W&B's RUN_INFO_GRACE_PERIOD), and
# the first wait between looks (it doubles: 1, 2, 4 ... s, as in W&B's agent).
DEFAULT_RUN_INFO_GRACE_PERIOD = 60.0
DEFAULT_RUN_INFO_FIRST_INTERVAL = 1.0
RUN_NOT_STARTED = "The submitted run was not successfully started"
RUN_INIT_MISSING = "The submitted job exited successfully but failed to call wandb.init"
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+):[^@/\s]+@")


class WandbBackend:
    """The Backend protocol over W&B's GraphQL API (the operations W&B's agent sends)."""

    supports_wakeup = False
    # The clock and the sleep of polls and grace periods (tests drive them).
    _clock = staticmethod(time.monotonic)
    _sleep = staticmethod(time.sleep)

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        entity: str | None = None,
        check_runs: bool = True,
        min_poll_interval: float = DEFAULT_MIN_POLL_INTERVAL,
        idle_poll_interval: float | None = None,
        quick_poll_seconds: float | None = None,
        stop_check_interval: float = DEFAULT_STOP_CHECK_INTERVAL,
        run_info_grace_period: float = DEFAULT_RUN_INFO_GRACE_PERIOD,
        run_info_first_interval: float = DEFAULT_RUN_INFO_FIRST_INTERVAL,
        **client_options: Any,
    ) -> None:
        """`idle_poll_interval` and `quick_poll_seconds` default to the agent config's keys
        of those names (read at `create_launch_agent`), else 10 s and 60 s."""
        self.base_url = base_url
        self._api_key = resolve_api_key(base_url, api_key)
        self._client = WandbClient(base_url, self._api_key, **client_options)
        self._entity = entity or os.environ.get("WANDB_ENTITY") or None
        self._check_runs = check_runs
        self._min_poll_interval = min_poll_interval
        self._idle_poll_interval = idle_poll_interval
        self._quick_poll_seconds = quick_poll_seconds
        self._stop_check_interval = stop_check_interval
        self._run_info_grace_period = run_info_grace_period
        self._run_info_first_interval = run_info_first_interval
        self._idle_until: dict[str, float] = {}
        self._active_at = self._clock()  # a start counts as activity: poll quickly
        self._agent_records: dict[str, tuple[float, AgentRecord]] = {}
        self._stop_checks: dict[str, tuple[float, bool]] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> WandbBackend:
        """`wandb`, `wandb://` or `wandb+https://HOST[:PORT]` (see the module docstring)."""
        return cls(base_url_from(url), **options)

    @property
    def display_url(self) -> str:
        return f"W&B at {self.base_url}"

    def close(self) -> None:
        self._client.close()

    def _run(self, operation: str, document: str, **variables: Any) -> dict[str, Any]:
        return self._client.execute(operation, document, variables)

    # -- politeness (see the module docstring) --
    def _active(self) -> None:
        """Something happened (an item popped, a job ended): poll quickly for a while,
        starting now (a slot may just have freed)."""
        self._active_at = self._clock()
        self._idle_until.clear()

    def poll_delay(self) -> float:
        """Seconds until an idle queue (and the agent's record) is asked again."""
        quick = self._quick_poll_seconds
        if quick is None:
            quick = DEFAULT_QUICK_POLL_SECONDS
        if self._clock() - self._active_at < quick:
            return self._min_poll_interval
        idle = self._idle_poll_interval
        return max(self._min_poll_interval, DEFAULT_IDLE_POLL_INTERVAL if idle is None else idle)

    def _configure_polling(self, agent_config: dict[str, Any]) -> None:
        """The agent config's `idle_poll_interval` / `quick_poll_seconds`, unless given."""
        for key in ("idle_poll_interval", "quick_poll_seconds"):
            value = agent_config.get(key)
            if getattr(self, f"_{key}") is None and isinstance(value, int | float):
                setattr(self, f"_{key}", float(value))

    def _require_entity(self, entity: str | None) -> str:
        chosen = entity or self._entity
        if not chosen:
            raise ConfigError(
                "the W&B backend needs an entity (the W&B user or team whose queues to "
                "serve): set `entity` in the agent config, LAUNCH_AGENT_ENTITY, --entity "
                "or WANDB_ENTITY"
            )
        return chosen

    # -- the agent's own record --
    def create_launch_agent(
        self,
        entity: str | None,
        project: str,
        queues: list[str],
        hostname: str,
        agent_config: dict[str, Any],
        version: str,
        name: str | None = None,
    ) -> str:
        """Register as W&B's agent does: resolve queue ids, createLaunchAgent, team check.

        W&B names agents itself: `name` is not sent, and every start is a new agent."""
        entity = self._require_entity(entity)
        self._entity = entity
        self._configure_polling(agent_config)
        queue_ids = self.resolve_queue_ids(entity, project, queues)
        data = self._run(
            "createLaunchAgent",
            ops.CREATE_LAUNCH_AGENT,
            entity=entity,
            project=project,
            queues=queue_ids,
            hostname=hostname,
            agentConfig=json.dumps(config_without_secrets(agent_config)),
            version=version,
        )
        payload = data.get("createLaunchAgent") or {}
        agent_id = payload.get("launchAgentId")
        if not agent_id:
            raise BackendError(f"W&B did not register the agent for {entity}/{project}")
        self._warn_if_team(entity)
        log.info("registered with %s as launch agent %s", self.display_url, agent_id)
        return str(agent_id)

    def resolve_queue_ids(self, entity: str, project: str, queues: list[str]) -> list[str]:
        """The ids of the named queues; a ConfigError naming the missing and available ones."""
        data = self._run(
            "ProjectRunQueues", ops.PROJECT_RUN_QUEUES, entity=entity, projectName=project
        )
        found = data.get("project")
        if found is None:
            raise BackendError(
                f"could not read the run queues of {entity}/{project}: check that the entity "
                "exists and that the API key's user can access it"
            )
        available = found.get("runQueues") or []
        ids = [str(q["id"]) for q in available if q.get("name") in queues]
        names = {q.get("name") for q in available}
        missing = [q for q in queues if q not in names]
        if missing:
            listed = ", ".join(sorted(str(n) for n in names)) or "none"
            raise ConfigError(
                f"queue(s) {', '.join(missing)} not found in {entity}/{project}; available "
                f"queues: {listed}. Create the queue in W&B (Launch > Create queue) or fix "
                "`queues` in the agent config"
            )
        return ids

    def _warn_if_team(self, entity: str) -> None:
        data = self._run("EntityIsTeam", ops.ENTITY_IS_TEAM, entity=entity)
        found = data.get("entity")
        if found is None:
            raise BackendError(
                f"could not read entity {entity!r}: check that you have access to this entity"
            )
        if found.get("isTeam"):
            log.warning(
                "agent is running on team entity (%s): members of this team will be able to "
                "run code on this machine",
                entity,
            )

    def get_launch_agent(self, agent_id: str) -> AgentRecord:
        """The agent's record (its `stopPolling`); an idle agent reads it every
        `poll_delay()` seconds at most, as W&B's agent reads it every 10 s."""
        now = self._clock()
        cached = self._agent_records.get(agent_id)
        if cached is not None and now - cached[0] < self.poll_delay():
            return cached[1]
        data = self._run("LaunchAgent", ops.LAUNCH_AGENT, agentId=agent_id)
        record = data.get("launchAgent")
        if record is None:
            raise BackendError(f"W&B has no launch agent {agent_id!r} (was it deleted?)")
        found = self._record_of(record)
        self._agent_records[agent_id] = (now, found)
        return found

    @staticmethod
    def _record_of(record: dict[str, Any]) -> AgentRecord:
        return AgentRecord(
            id=str(record["id"]),
            name=str(record.get("name") or record["id"]),
            status=str(record.get("agentStatus") or ""),
            stop_polling=bool(record.get("stopPolling")),
            hostname=str(record.get("hostname") or ""),
            queues=[str(q) for q in record.get("runQueues") or []],
            heartbeat_at=parse_datetime(record.get("heartbeatAt")),
        )

    def update_launch_agent_status(self, agent_id: str, status: AgentStatus) -> bool:
        data = self._run(
            "updateLaunchAgent",
            ops.UPDATE_LAUNCH_AGENT,
            agentId=agent_id,
            agentStatus=AgentStatus(status).value,
        )
        return bool((data.get("updateLaunchAgent") or {}).get("success"))

    def heartbeat(self, agent_id: str) -> None:
        """Nothing to send: W&B notes the agent's heartbeat when it pops with its id."""

    # -- the queue --
    def pop_from_run_queue(
        self, queue: str, entity: str | None, project: str, agent_id: str, generation: int = 0
    ) -> Lease | None:
        entity = self._require_entity(entity)
        if self._clock() < self._idle_until.get(queue, 0.0):
            return None
        data = self._run(
            "popFromRunQueue",
            ops.POP_FROM_RUN_QUEUE,
            entity=entity,
            project=project,
            queueName=queue,
            launchAgentId=agent_id,
        )
        payload = data.get("popFromRunQueue") or {}
        item_id = payload.get("runQueueItemId")
        if not item_id:
            self._idle_until[queue] = self._clock() + self.poll_delay()
            return None
        self._active()
        item = QueueItem(id=str(item_id), queue=queue, run_spec={})
        spec = _spec_of(payload.get("runSpec"))
        if spec is None:
            lease = Lease(item, agent_id, generation, entity=entity)
            self.fail_run_queue_item(lease, "runSpec is not a JSON object", Phase.AGENT)
            log.error("item %s from queue %r: runSpec is not a JSON object", item_id, queue)
            return None
        item.run_spec = spec
        return Lease(
            item,
            agent_id,
            generation,
            entity=str(spec.get("entity") or entity),
            project=_str_or_none(spec.get("project")),
        )

    def ack_run_queue_item(self, lease: Lease, run_id: str) -> Lease | None:
        data = self._run(
            "ackRunQueueItem", ops.ACK_RUN_QUEUE_ITEM, itemId=lease.item_id, runId=run_id
        )
        acked = bool((data.get("ackRunQueueItem") or {}).get("success"))
        return lease.claimed(run_id) if acked else None

    def release_run_queue_item(self, lease: Lease) -> None:
        """Nothing to send: W&B's lease expiry returns an unacked item to its queue."""

    def fail_run_queue_item(
        self,
        lease: Lease,
        message: str,
        phase: Phase,
        files: list[str] | None = None,
        exit_code: int | None = None,
    ) -> bool:
        self._active()
        variables: dict[str, Any] = {
            "runQueueItemId": lease.item_id,
            "message": message,
            "stage": Phase(phase).value,
        }
        if files is not None:  # as W&B's client: no `filePaths` at all when there are none
            variables["filePaths"] = files
        data = self._client.execute("failRunQueueItem", ops.FAIL_RUN_QUEUE_ITEM, variables)
        return bool((data.get("failRunQueueItem") or {}).get("success"))

    def update_run_queue_item_warning(
        self, item_id: str, message: str, phase: str, files: list[str] | None = None
    ) -> bool:
        data = self._run(
            "updateRunQueueItemWarning",
            ops.UPDATE_RUN_QUEUE_ITEM_WARNING,
            runQueueItemId=item_id,
            message=message,
            stage=str(phase),
            filePaths=files,
        )
        return bool((data.get("updateRunQueueItemWarning") or {}).get("success"))

    def complete_run_queue_item(
        self, lease: Lease, state: ItemState, exit_code: int | None = None
    ) -> bool:
        """W&B takes the item's end from its run; fail it if the run never started in W&B
        (never appeared, or stayed `pending`) within the grace period (module docstring)."""
        self._active()
        self._stop_checks.pop(lease.run_id or "", None)
        if not self._check_runs or state not in (ItemState.FINISHED, ItemState.STOPPED):
            return True
        if lease.entity is None or lease.project is None or lease.run_id is None:
            return True
        if self._entity is not None and lease.entity != self._entity:
            return True  # W&B's agent does not check runs on another entity either
        try:
            run_state = self._wait_for_run(lease.entity, lease.project, lease.run_id)
        except Exception as exc:  # a check that cannot be made must not fail the item
            log.warning(
                "item %s: could not check run %s in W&B: %s", lease.item_id, lease.run_id, exc
            )
            return True
        if run_state is None or run_state.lower() == "pending":
            head = RUN_INIT_MISSING if state is ItemState.FINISHED else RUN_NOT_STARTED
            seen = "stayed pending" if run_state else "never appeared"
            message = (
                f"{head}: run {lease.run_id} {seen} in {lease.entity}/{lease.project} "
                f"within {self._run_info_grace_period:g} s"
            )
            log.warning("item %s: %s", lease.item_id, message)
            self.fail_run_queue_item(lease, message, Phase.RUN)
        return True

    def _wait_for_run(self, entity: str, project: str, run_id: str) -> str | None:
        """The run's state once it started (not `pending`), looking again after 1, 2, 4 ...
        s until `run_info_grace_period` passed (W&B's agent: checks at 0, 1, 3, ... 63 s);
        the last state seen (None: no run) if it never did."""
        interval = self._run_info_first_interval
        waited = 0.0
        while True:
            run_state = self._run_state(entity, project, run_id)
            if run_state is not None and run_state.lower() != "pending":
                return run_state
            if waited >= self._run_info_grace_period or interval <= 0:
                return run_state
            self._sleep(interval)
            waited += interval
            interval *= 2

    def requeue_run_queue_item(
        self, lease: Lease, run_spec: dict[str, Any], exit_code: int | None = None
    ) -> str | None:
        """W&B ends the preempted item with its run; push the resume to the same queue."""
        return self.push_to_run_queue(lease.queue, run_spec, None, lease.entity, lease.project)

    def _run_state(self, entity: str, project: str, run_id: str) -> str | None:
        """The run's state in W&B; None if there is no such run."""
        data = self._run("RunState", ops.RUN_STATE, project=project, entity=entity, name=run_id)
        run = (data.get("project") or {}).get("run")
        if run is None:
            return None
        return str(run.get("state") or "")

    def push_to_run_queue(
        self,
        queue: str,
        run_spec: dict[str, Any],
        priority: int | None = None,
        entity: str | None = None,
        project: str | None = None,
    ) -> str:
        """pushToRunQueueByName; `entity`/`project` say where the queue lives."""
        entity = self._require_entity(entity)
        project = project or DEFAULT_PROJECT
        variables: dict[str, Any] = {
            "entityName": entity,
            "projectName": project,
            "queueName": queue,
            "runSpec": json.dumps(run_spec),
        }
        document = ops.PUSH_TO_RUN_QUEUE_BY_NAME
        if priority is not None:
            variables["priority"] = priority
            document = ops.PUSH_TO_RUN_QUEUE_BY_NAME_WITH_PRIORITY
        data = self._client.execute("pushToRunQueueByName", document, variables)
        item_id = (data.get("pushToRunQueueByName") or {}).get("runQueueItemId")
        if not item_id:
            raise BackendError(
                f"W&B did not add the item to queue {queue!r} of {entity}/{project}: "
                "check that the queue exists there"
            )
        return str(item_id)

    # -- runs and sweeps --
    def run_should_stop(self, entity: str | None, project: str | None, run_id: str) -> bool:
        """RunStoppedStatus: whether someone stopped the run in W&B (asked at most every
        `stop_check_interval` per run; the last answer stands in between)."""
        if not project:
            return False
        now = self._clock()
        cached = self._stop_checks.get(run_id)
        if cached is not None and now - cached[0] < self._stop_check_interval:
            return cached[1]
        data = self._run(
            "RunStoppedStatus",
            ops.RUN_STOPPED_STATUS,
            projectName=project,
            entityName=entity or self._entity,
            runId=run_id,
        )
        run = (data.get("project") or {}).get("run") or {}
        stopped = bool(run.get("stopped"))
        self._stop_checks[run_id] = (now, stopped)
        return stopped

    def get_sweep_state(self, sweep_id: str, entity: str | None, project: str | None) -> str | None:
        data = self._run(
            "GetSweepState",
            ops.GET_SWEEP_STATE,
            entity=entity or self._entity,
            project=project,
            sweep=sweep_id,
        )
        sweep = (data.get("project") or {}).get("sweep") or {}
        state = sweep.get("state")
        return str(state).upper() if state else None

    def set_sweep_state(
        self, sweep_id: str, state: str, entity: str | None, project: str | None
    ) -> None:
        entity = entity or self._entity
        data = self._run(
            "SweepIdAndState",
            ops.SWEEP_ID_AND_STATE,
            entity=entity,
            project=project,
            sweep=sweep_id,
        )
        sweep = (data.get("project") or {}).get("sweep")
        if not sweep:
            raise BackendError(f"W&B has no sweep {sweep_id!r} in {entity}/{project}")
        self._run(
            "UpsertSweep",
            ops.UPSERT_SWEEP,
            id=sweep["id"],
            state=state,
            entityName=entity,
            projectName=project,
        )

    def wait_for_items(self, queues: list[str], timeout: float) -> bool:
        """W&B cannot announce new items: the agent polls."""
        return False

    # -- the job's credentials --
    def job_environment(self, spec: LaunchSpec) -> dict[str, str]:
        """WANDB_BASE_URL and the API key (the item's own key wins), by environment only."""
        return {
            "WANDB_BASE_URL": self.base_url,
            "WANDB_API_KEY": spec.wandb_api_key or self._api_key,
        }


def config_without_secrets(config: dict[str, Any]) -> dict[str, Any]:
    """The agent config as W&B shows it: secret-named keys masked, URL passwords removed."""
    masked = redact_mapping(config)
    return _strip_url_passwords(masked) if isinstance(masked, dict) else {}


def _strip_url_passwords(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_url_passwords(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_url_passwords(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1:***@", value)
    return value


def parse_datetime(value: Any) -> float | None:
    """A W&B DateTime (ISO 8601, UTC when no zone is given) as a Unix time."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _spec_of(raw: Any) -> dict[str, Any] | None:
    """runSpec arrives as a JSON object (or, from some servers, a JSON string)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    return raw if isinstance(raw, dict) else None


def _str_or_none(value: Any) -> str | None:
    return str(value) if value else None
