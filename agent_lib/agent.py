"""The launch agent: pops run queue items, runs each as a job, tracks it to the end.

Its public surface is W&B's `LaunchAgent` (same names, same meaning). Unlike the
reference it never sleeps a fixed 10 s: a finished job frees its slot at once, and an idle
agent looks again after `poll_interval` (or the moment its backend says an item arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import string
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from agent_lib import __version__
from agent_lib.backends.base import Backend
from agent_lib.builders import make_builder
from agent_lib.config import AgentConfig
from agent_lib.environment import job_environment
from agent_lib.errors import (
    LaunchError,
    LeaseLostError,
    RunFailedError,
    SpecError,
)
from agent_lib.files import ItemFileSaver, job_dir_for
from agent_lib.hooks import AgentHooks, backoff_delay
from agent_lib.redact import (
    install_log_redaction,
    redact,
    redact_mapping,
    register_secret,
    register_secrets_in,
)
from agent_lib.runners import (
    LaunchContext,
    Status,
    SubmittedRun,
    available_resources,
    make_runner,
)
from agent_lib.spec import LOCAL_PROCESS, LaunchSpec, QueueItem
from agent_lib.states import AgentStatus, ItemState, Phase, RunState
from agent_lib.tracker import JobTracker

log = logging.getLogger(__name__)
T = TypeVar("T")

RUN_ID_ALPHABET = string.ascii_lowercase + string.digits
SWEEP_STATES_THAT_RUN = ("RUNNING", "PAUSED")


@dataclass
class JobAndQueue:
    """An item popped from a queue, with the queue's name (W&B's JobSpecAndQueue)."""

    job: QueueItem
    queue: str


def generate_run_id(length: int = 8) -> str:
    """A W&B-style run id: 8 lowercase letters and digits."""
    return "".join(secrets.choice(RUN_ID_ALPHABET) for _ in range(length))


class LaunchAgent:
    """Polls run queues and launches their items as jobs.

    `LaunchAgent(api, config)` as in W&B: `api` is a Backend, `config` an AgentConfig or a
    dict of its keys. Run it with `await agent.loop()` (or `asyncio.run(agent.loop())`).
    """

    _instance: ClassVar[LaunchAgent | None] = None

    def __init__(
        self,
        api: Backend,
        config: AgentConfig | Mapping[str, Any],
        hooks: AgentHooks | None = None,
    ) -> None:
        install_log_redaction()
        self._api = api
        self._config = config if isinstance(config, AgentConfig) else AgentConfig.load(**config)
        self.default_config = self._config
        self._hooks = hooks or AgentHooks()
        self._entity = self._config.entity
        self._project = self._config.project
        self._queues: list[str] = list(self._config.queues)
        self._max_jobs = self._config.job_limit
        self._max_schedulers = self._config.scheduler_limit
        self._secure_mode = self._config.secure_mode
        self._jobs: dict[str, JobTracker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._deferred: dict[str, float] = {}
        self._outcomes: Counter[str] = Counter()
        self._status: AgentStatus | None = None
        self._stop_reason: str | None = None
        self._requeue_on_stop = self._config.on_stop == "requeue"
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_status_print = 0.0
        self._jobs_started = 0
        self._started_at = time.monotonic()
        # Runs found at start that we could not adopt yet: their old agent may still count
        # as alive. We look again on each tick until its agent_timeout has surely passed.
        self._strays: set[tuple[str, str]] = set()
        self._reattach_until = (
            self._started_at + self._config.agent_timeout + 2 * self._config.heartbeat_interval
        )
        register_secret(os.environ.get("WANDB_API_KEY"))
        self._id = api.create_launch_agent(
            self._entity,
            self._project,
            self._queues,
            socket.gethostname(),
            self._config.public_dict(),
            f"launch-agent@{__version__}",
        )
        self._name = api.get_launch_agent(self._id).name
        LaunchAgent._instance = self

    # -- W&B's class-level surface --
    @classmethod
    def initialized(cls) -> bool:
        """Return whether an agent has been created in this process."""
        return cls._instance is not None

    @classmethod
    def name(cls) -> str:
        """Return the name of the agent (as the backend knows it)."""
        if cls._instance is None:
            raise LaunchError("the launch agent has not been initialized")
        return cls._instance._name

    # -- counts --
    @property
    def id(self) -> str:
        return self._id

    @property
    def config(self) -> AgentConfig:
        return self._config

    @property
    def thread_ids(self) -> list[str]:
        """The item ids of the jobs running now (W&B keys jobs by 'thread id')."""
        return list(self._jobs)

    @property
    def num_running_jobs(self) -> int:
        """Jobs running now, not counting sweep schedulers."""
        return sum(1 for t in self._jobs.values() if not t.is_scheduler)

    @property
    def num_running_schedulers(self) -> int:
        return sum(1 for t in self._jobs.values() if t.is_scheduler)

    @property
    def outcomes(self) -> dict[str, int]:
        """How many jobs ended in each way since the agent started."""
        return dict(self._outcomes)

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        """Why the agent stops (or stopped); None while it runs."""
        return self._stop_reason

    # -- the loop --
    async def loop(self) -> None:
        """Poll for items and run them until asked to stop.

        Stops on `stopPolling`, on `stop()` (signals), on cancellation, or, with
        `exit_when_idle`, when the queues are empty and no job runs.
        """
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        watcher = self._start_wakeup_watcher()
        await self.update_status(AgentStatus.POLLING)
        await self._reattach_runs()
        self.print_status()
        next_tick = 0.0
        failures = 0
        seen_idle = False
        try:
            while not self.stopping:
                now = time.monotonic()
                if now >= next_tick:
                    await self._tick()
                    next_tick = now + self._config.heartbeat_interval
                    if self.stopping:
                        break
                try:
                    started = await self._fill_slots()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    delay = backoff_delay(failures, base=self._config.poll_interval)
                    log.warning("backend unavailable (%s); retrying in %.1fs", exc, delay)
                    await self._idle(delay)
                    continue
                if started:
                    seen_idle = False
                    continue
                idle = not (self._jobs or self._deferred or self._strays)
                if self._config.exit_when_idle and idle:
                    # Twice in a row: an item released back to its queue while we popped
                    # (a deferred scheduler) is seen on the second look.
                    if seen_idle:
                        self._stop_reason = "queues are empty (exit_when_idle)"
                        break
                    seen_idle = True
                    continue
                seen_idle = False
                await self._idle(self._config.poll_interval)
        except asyncio.CancelledError:
            self._stop_reason = self._stop_reason or "cancelled"
            await asyncio.shield(self._shutdown())
            raise
        finally:
            if watcher is not None:
                watcher.set()
        await self._shutdown()

    def stop(self, requeue: bool | None = None, reason: str = "stop requested") -> None:
        """Ask the loop to stop popping and end. Safe to call from signal handlers.

        `requeue=True` cancels running jobs and puts their items back on their queues
        (resumable); otherwise running jobs finish first (config `on_stop`).
        """
        if requeue is not None:
            self._requeue_on_stop = requeue
        if self._requeue_on_stop:
            for tracker in self._jobs.values():
                tracker.requeue_on_stop = True
        self._stop_reason = self._stop_reason or reason
        self._notify()

    def _notify(self) -> None:
        """Wake the loop (from any thread)."""
        if self._wake is None or self._loop is None:
            return
        if threading.get_ident() == getattr(self._loop, "_thread_id", None):
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _idle(self, timeout: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    def _start_wakeup_watcher(self) -> threading.Event | None:
        """For backends that can announce new items (LISTEN/NOTIFY), wake the loop at once."""
        if not getattr(self._api, "supports_wakeup", False):
            return None
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                try:
                    if self._api.wait_for_items(list(self._queues), 1.0):
                        self._notify()
                except Exception as exc:
                    log.debug("wake-up watcher: %s", exc)
                    done.wait(1.0)

        threading.Thread(target=watch, name="launch-agent-wakeup", daemon=True).start()
        return done

    async def _tick(self) -> None:
        """Heartbeat, `stopPolling`, status: the slow, periodic part of the loop."""
        try:
            record = await self._call(self._api.get_launch_agent, self._id)
            if record.stop_polling:
                self.stop(reason="stopPolling was set on the agent's record")
                return
            await self._call(self._api.heartbeat, self._id)
            reap = getattr(self._api, "reap_lost_agents", None)
            if reap is not None:  # settle the items of agents whose heartbeat stopped
                await self._call(reap)
        except Exception as exc:
            log.warning("could not reach the backend for the heartbeat: %s", exc)
        self._expire_deferred()
        self._check_handover()
        if self._strays:
            await self._reattach_runs()
        interval = self._config.status_interval / (1 + 2 * self._config.verbosity)
        if time.monotonic() - self._last_status_print >= interval:
            self.print_status()

    async def _fill_slots(self) -> bool:
        """Pop and start items while there is room. Returns whether anything started."""
        started = False
        while not self.stopping and self.num_running_jobs < self._max_jobs:
            job_and_queue = await self.get_job_and_queue()
            if job_and_queue is None:
                break
            item = job_and_queue.job
            if self._over_scheduler_cap(item):
                continue
            file_saver = ItemFileSaver(self._job_dir(item, "pending"))
            try:
                await self.run_job(item, job_and_queue.queue, file_saver)
            except Exception as exc:
                # A bad item never takes the agent down: fail it and go on.
                await self._fail_unstarted(item, exc)
            started = True
            self._jobs_started += 1
            self._check_handover()
        return started

    def _check_handover(self) -> None:
        """Stop popping after `stop_after_jobs` / `stop_after_seconds`, to hand over."""
        limit_jobs = self._config.stop_after_jobs
        limit_secs = self._config.stop_after_seconds
        if limit_jobs is not None and self._jobs_started >= limit_jobs:
            self.stop(reason=f"handing over after {self._jobs_started} jobs (stop_after_jobs)")
        elif limit_secs is not None and time.monotonic() - self._started_at >= limit_secs:
            self.stop(reason=f"handing over after {limit_secs:.0f}s (stop_after_seconds)")

    def _over_scheduler_cap(self, item: QueueItem) -> bool:
        """A scheduler over `max_schedulers` is not launched; its lease sends it back."""
        try:
            is_scheduler = LaunchSpec.parse(item.run_spec).is_scheduler
        except SpecError:
            return False
        if not is_scheduler or self.num_running_schedulers < self._max_schedulers:
            return False
        log.warning(
            "item %s is a sweep scheduler and %d of max_schedulers=%s run: leaving it queued",
            item.id,
            self.num_running_schedulers,
            self._config.max_schedulers,
        )
        self._deferred[item.id] = time.monotonic()
        return True

    def _expire_deferred(self) -> None:
        """Forget deferred schedulers whose lease has run out (the backend requeued them)."""
        horizon = time.monotonic() - self._config.lease_seconds
        for item_id in [i for i, t in self._deferred.items() if t < horizon]:
            del self._deferred[item_id]

    async def _release_deferred(self) -> None:
        """Give deferred schedulers back to their queues now that a slot (or the end) came."""
        for item_id in list(self._deferred):
            try:
                await self._call(self._api.release_run_queue_item, item_id)
            except Exception as exc:
                log.warning("could not release item %s (its lease will): %s", item_id, exc)
            # Forget it only now: until it is back in its queue, the agent is not idle.
            self._deferred.pop(item_id, None)

    async def get_job_and_queue(self) -> JobAndQueue | None:
        """Pop from the queues round-robin; the queue that served moves to the back."""
        for queue in list(self._queues):
            job = await self.pop_from_queue(queue)
            if job is not None:
                self._queues.remove(queue)
                self._queues.append(queue)
                return JobAndQueue(job, queue)
        return None

    async def pop_from_queue(self, queue: str) -> QueueItem | None:
        """Pop an item off the run queue to run as a job (None when it is empty)."""
        return await self._call(
            self._api.pop_from_run_queue, queue, self._entity, self._project, self._id
        )

    # -- one job --
    async def run_job(
        self, job: QueueItem, queue: str, file_saver: ItemFileSaver | None = None
    ) -> None:
        """Start the job for a popped item and return; it runs as its own task."""
        register_secrets_in(job.run_spec)
        log.info(
            "item %s from queue %r received: %s",
            job.id,
            queue,
            redact_mapping(job.run_spec),
        )
        tracker = JobTracker(
            run_queue_item_id=job.id,
            queue=queue,
            saver=file_saver or ItemFileSaver(self._job_dir(job, "pending")),
            requeue_on_stop=self._requeue_on_stop,
        )
        self._jobs[job.id] = tracker
        await self.update_status(AgentStatus.RUNNING)
        task = asyncio.create_task(
            self.task_run_job(job.run_spec, job, self._config, self._api, tracker),
            name=f"launch-job-{job.id}",
        )
        self._tasks[job.id] = task

    async def task_run_job(
        self,
        launch_spec: dict[str, Any],
        job: QueueItem,
        default_config: AgentConfig,
        api: Backend,
        job_tracker: JobTracker,
    ) -> None:
        """Run one item to its end: the whole job lifecycle, failures reported."""
        exception: BaseException | None = None
        try:
            await self._hooks.run_job(
                job_tracker,
                lambda: self._job_lifecycle(launch_spec, job, default_config, api, job_tracker),
            )
        except LeaseLostError as exc:
            log.warning("item %s: %s", job.id, exc)
        except Exception as exc:
            exception = exc
        except asyncio.CancelledError as exc:
            exception = exc
            raise
        finally:
            await asyncio.shield(self.finish_thread_id(job.id, exception))

    async def _job_lifecycle(
        self,
        launch_spec: dict[str, Any],
        job: QueueItem,
        default_config: AgentConfig,
        api: Backend,
        tracker: JobTracker,
    ) -> None:
        step = self._hooks.run_step
        try:
            if tracker.run is None:
                spec = await self._start(launch_spec, job, api, tracker)
            else:  # re-attached: the run is already going
                spec = tracker.spec or LaunchSpec(run_id=tracker.run_id)
            tracker.err_stage = Phase.RUN
            status = await step(tracker, "wait", lambda: self._wait(tracker))
            await step(tracker, "finish", lambda: self._record_end(spec, tracker, status))
        except (LeaseLostError, asyncio.CancelledError):
            raise
        except Exception as exc:
            failure = exc
            await step(
                tracker,
                "report failure",
                lambda: self._report_failure(tracker, failure),
                retries=self._config.launch_retries,
            )
            raise

    async def _start(
        self, launch_spec: dict[str, Any], job: QueueItem, api: Backend, tracker: JobTracker
    ) -> LaunchSpec:
        """Validate, ack, check the sweep, build and launch: everything before the wait."""
        step = self._hooks.run_step
        spec = await step(tracker, "validate", lambda: self._validate(launch_spec, tracker))
        await step(
            tracker, "ack", lambda: self._ack(job, tracker), retries=self._config.launch_retries
        )
        await step(tracker, "check sweep", lambda: self.check_sweep_state(spec, api))
        tracker.err_stage = Phase.BUILD
        image = await step(tracker, "build", lambda: self._build(spec, tracker))
        tracker.err_stage = Phase.AGENT
        await step(
            tracker,
            "launch",
            lambda: self._launch(spec, image, tracker),
            retries=self._config.launch_retries,
        )
        return spec

    async def _reattach_runs(self) -> None:
        """Adopt runs that outlived an earlier agent (containers do); report strays.

        Runners that can find their runs again offer `list_runs()`, returning each run with
        the labels the agent gave it. A run whose item this agent may adopt is tracked to
        its end. One it may not adopt yet (its old agent is not yet counted as lost) is
        tried again on later ticks; after `agent_timeout` it is left alone, and said.
        """
        final = time.monotonic() >= self._reattach_until
        still_stray: set[tuple[str, str]] = set()
        for resource in available_resources():
            try:
                runner = make_runner(resource, self._config)
                list_runs = getattr(runner, "list_runs", None)
                found = await list_runs() if list_runs is not None else []
            except Exception as exc:
                log.debug("cannot look for %s runs to re-attach: %s", resource, exc)
                continue
            for labels, run in found:
                if not await self._adopt(resource, labels, run):
                    still_stray.add((labels["launch-agent.item"], labels["launch-agent.run"]))
        if final:
            for item_id, run_id in sorted(still_stray):
                log.warning(
                    "a run of item %s (run %s) is still present, but this agent may not adopt "
                    "it (the item ended or a live agent holds it); leaving it alone",
                    item_id,
                    run_id,
                )
            still_stray.clear()
        self._strays = still_stray

    async def _adopt(self, resource: str, labels: dict[str, str], run: SubmittedRun) -> bool:
        """Track a found run to its end if we may. False: a stray we may not (yet) adopt."""
        item_id = labels.get("launch-agent.item")
        run_id = labels.get("launch-agent.run")
        queue = labels.get("launch-agent.queue", "?")
        if not item_id or not run_id or item_id in self._jobs or queue not in self._queues:
            return True  # not a candidate: nothing to look at again
        if not await self._call(self._api.adopt_run_queue_item, item_id, run_id, self._id):
            return False
        log.info("item %s: re-attached to its %s run %s", item_id, resource, run_id)
        tracker = JobTracker(
            run_queue_item_id=item_id,
            queue=queue,
            saver=ItemFileSaver(self._job_dir_for(item_id, run_id)),
            spec=LaunchSpec(run_id=run_id),
            run_id=run_id,
            entity=self._entity,
            resource=resource,
            run=run,
            description=f"re-attached {resource} run",
            requeue_on_stop=self._requeue_on_stop,
        )
        self._jobs[item_id] = tracker
        job = QueueItem(id=item_id, queue=queue, run_spec={})
        self._tasks[item_id] = asyncio.create_task(
            self.task_run_job({}, job, self._config, self._api, tracker),
            name=f"launch-job-{item_id}",
        )
        await self.update_status(AgentStatus.RUNNING)
        return True

    async def _validate(self, launch_spec: dict[str, Any], tracker: JobTracker) -> LaunchSpec:
        spec = LaunchSpec.parse(launch_spec)
        register_secret(spec.wandb_api_key)
        self._assert_secure(spec)
        tracker.spec = spec
        tracker.run_id = spec.run_id or generate_run_id()
        tracker.entity = spec.entity or self._entity
        tracker.project = spec.project
        tracker.is_scheduler = spec.is_scheduler
        tracker.resource = spec.resource_or(self._config.default_resource)
        make_runner(tracker.resource, self._config)  # unknown resources fail here, unlaunched
        job_dir = self._job_dir_for(tracker.run_queue_item_id, tracker.run_id)
        tracker.saver = ItemFileSaver(job_dir)
        return spec

    def _assert_secure(self, spec: LaunchSpec) -> None:
        """In secure mode, refuse items that change what runs (W&B's rules, ours added)."""
        if not self._secure_mode:
            return
        if spec.overrides.entry_point:
            raise SpecError(
                "secure_mode: this agent does not allow overriding the entry point "
                "(overrides.entry_point); run a named job instead"
            )
        k8s = spec.resource_args.get("kubernetes", {})
        pod = k8s.get("spec", {}).get("template", {}).get("spec", {})
        for key in ("hostPID", "hostIPC", "hostNetwork", "initContainers"):
            if key in pod:
                raise SpecError(f"secure_mode: this agent does not allow setting pod spec {key!r}")
        for container in pod.get("containers", []):
            if "command" in container:
                raise SpecError("secure_mode: this agent does not allow a container 'command'")
        if spec.job and spec.job not in self._config.jobs:
            raise SpecError(f"secure_mode: job {spec.job!r} is not one of this agent's jobs")

    async def _ack(self, job: QueueItem, tracker: JobTracker) -> None:
        assert tracker.run_id is not None
        acked = await self._call(self._api.ack_run_queue_item, job.id, tracker.run_id)
        if not acked:
            raise LeaseLostError(
                "its lease expired and the item went back to the queue before the ack; "
                "not launching it here"
            )

    async def check_sweep_state(self, launch_spec: LaunchSpec | dict[str, Any], api: Any) -> None:
        """Before launching a sweep's run, make sure the sweep still wants runs."""
        spec = launch_spec if isinstance(launch_spec, LaunchSpec) else LaunchSpec.parse(launch_spec)
        if not spec.sweep_id:
            return
        try:
            state = await self._call(
                api.get_sweep_state, spec.sweep_id, spec.entity or self._entity, spec.project
            )
        except Exception as exc:
            log.debug("could not read the state of sweep %s: %s", spec.sweep_id, exc)
            state = None
        if state not in SWEEP_STATES_THAT_RUN:
            raise LaunchError(
                f"sweep {spec.sweep_id} is in state {state or 'unknown'}, "
                "so its run was not launched"
            )

    async def _build(self, spec: LaunchSpec, tracker: JobTracker) -> str | None:
        if tracker.resource == LOCAL_PROCESS:
            return spec.image  # local processes run without an image, as in W&B
        builder = make_builder(self._config, spec.builder)
        return await builder.build_image(spec, tracker.job_dir)

    async def _launch(self, spec: LaunchSpec, image: str | None, tracker: JobTracker) -> None:
        assert tracker.run_id is not None and tracker.resource is not None
        command, definition = self._command_for(spec)
        env = job_environment(
            spec, tracker.run_queue_item_id, tracker.queue, tracker.run_id, self._entity
        )
        if definition is not None:
            env = {**definition.env, **env}
        env.update(self._job_credentials(spec))
        tracker.job_dir.mkdir(parents=True, exist_ok=True)
        context = LaunchContext(
            item_id=tracker.run_queue_item_id,
            queue=tracker.queue,
            run_id=tracker.run_id,
            spec=spec,
            command=command,
            image=image or (definition.image if definition else None),
            env=env,
            job_dir=tracker.job_dir,
            log_path=tracker.log_path,
            resource_args=spec.args_for(tracker.resource),
            labels={
                "launch-agent.agent": self._name,
                "launch-agent.queue": tracker.queue,
                "launch-agent.item": tracker.run_queue_item_id,
                "launch-agent.run": tracker.run_id,
            },
        )
        runner = make_runner(tracker.resource, self._config)
        tracker.run = await runner.run(context)
        tracker.description = " ".join(command) if command else (context.image or "")
        log.info(
            "item %s: launched run %s on %s: %s",
            tracker.run_queue_item_id,
            tracker.run_id,
            tracker.resource,
            redact(tracker.description),
        )

    def _command_for(self, spec: LaunchSpec) -> tuple[list[str], Any]:
        """The argv to run: a named job's entry point or the override, then the args."""
        definition = self._config.jobs.get(spec.job) if spec.job else None
        entry = spec.overrides.entry_point or (definition.entry_point if definition else [])
        args = spec.overrides.args or (definition.args if definition else [])
        return [*entry, *args], definition

    def _job_credentials(self, spec: LaunchSpec) -> dict[str, str]:
        """Credentials the job gets by environment only (never on its command line)."""
        provider = getattr(self._api, "job_environment", None)
        env: dict[str, str] = dict(provider(spec)) if provider else {}
        if spec.wandb_api_key:
            env["WANDB_API_KEY"] = spec.wandb_api_key
        register_secrets_in(env)  # WANDB_API_KEY and the like, by name
        return env

    async def _wait(self, tracker: JobTracker) -> Status:
        """Wait for the job's end; meanwhile honour stop requests and the start timeout."""
        run = tracker.run
        assert run is not None and tracker.run_id is not None
        ended = asyncio.ensure_future(run.wait())
        started_at = time.monotonic()
        stop_seen_at: float | None = None
        try:
            while True:
                done, _ = await asyncio.wait({ended}, timeout=self._config.stop_check_interval)
                if done:
                    status = ended.result()
                    tracker.completed_status = status
                    return status
                now = time.monotonic()
                if tracker.requeue_on_stop and self.stopping:
                    await run.cancel(self._config.cancel_grace)
                    continue
                current = await run.get_status()
                timeout = self._config.start_timeout
                if current.state is RunState.STARTING and timeout and now - started_at > timeout:
                    await run.cancel(self._config.cancel_grace)
                    raise RunFailedError(f"the job did not start within {timeout:.0f}s")
                if stop_seen_at is None and await self._run_should_stop(tracker):
                    stop_seen_at = now
                    log.info(
                        "item %s: a stop was requested; cancelling run %s in %.0fs",
                        tracker.run_queue_item_id,
                        tracker.run_id,
                        self._config.stopped_run_timeout,
                    )
                if stop_seen_at is not None and now - stop_seen_at >= (
                    self._config.stopped_run_timeout
                ):
                    await run.cancel(self._config.cancel_grace)
        finally:
            if not ended.done():
                ended.cancel()

    async def _run_should_stop(self, tracker: JobTracker) -> bool:
        try:
            return bool(
                await self._call(
                    self._api.run_should_stop, tracker.entity, tracker.project, tracker.run_id
                )
            )
        except Exception as exc:
            log.debug("could not ask whether run %s should stop: %s", tracker.run_id, exc)
            return False

    async def _record_end(self, spec: LaunchSpec, tracker: JobTracker, status: Status) -> None:
        """Turn the run's final status into the item's terminal state."""
        item_id = tracker.run_queue_item_id
        if status.state is RunState.FINISHED:
            await self._call(self._api.complete_run_queue_item, item_id, ItemState.FINISHED, 0)
            self._outcome("finished", tracker, f"finished in {tracker.elapsed:.1f}s")
            return
        preempted = status.state is RunState.PREEMPTED or (
            status.state is RunState.STOPPED and tracker.requeue_on_stop
        )
        if preempted:
            await self._call(
                self._api.complete_run_queue_item, item_id, ItemState.PREEMPTED, status.exit_code
            )
            await self._requeue(spec, tracker)
            return
        if status.state is RunState.STOPPED:
            await self._call(
                self._api.complete_run_queue_item, item_id, ItemState.STOPPED, status.exit_code
            )
            self._outcome("stopped", tracker, "stopped on request")
            return
        raise RunFailedError(self._exit_message(status))

    @staticmethod
    def _exit_message(status: Status) -> str:
        message = f"the job exited with code {status.exit_code}"
        if status.reason:
            message += f" ({status.reason})"
        return message

    async def _requeue(self, spec: LaunchSpec, tracker: JobTracker) -> None:
        """Put a preempted job back on its queue, to resume as the same run (W&B's rule)."""
        if spec.resume_count >= self._config.max_resume_count:
            self._outcome("preempted", tracker, "preempted too often; not requeued")
            return
        wire = spec.to_wire()
        wire["run_id"] = tracker.run_id
        wire["_resume_count"] = spec.resume_count + 1
        wire.pop("sweep_id", None)
        new_id = await self._call(
            self._api.push_to_run_queue, tracker.queue, wire, None, self._entity, self._project
        )
        self._outcome("requeued", tracker, f"requeued as item {new_id} to resume run")

    async def _report_failure(self, tracker: JobTracker, exc: BaseException) -> None:
        phase = exc.phase if isinstance(exc, LaunchError) else tracker.err_stage
        message = redact(str(exc) or type(exc).__name__)
        if isinstance(exc, RunFailedError) and tracker.run is not None:
            contents = await tracker.run.get_logs(tail=self._config.log_tail_lines)
        else:
            contents = "".join(traceback.format_exception(exc))
        files = tracker.saver.save_contents(contents, "error.log", "error")
        await self.fail_run_queue_item(tracker.run_queue_item_id, message, phase, files)
        tracker.failure_reported = True
        self._outcome("failed", tracker, f"FAILED in phase {phase}: {message}")

    async def _fail_unstarted(self, item: QueueItem, exc: BaseException) -> None:
        """An item that could not even be started: report it (phase agent) and go on."""
        log.exception("item %s could not be started", item.id)
        saver = ItemFileSaver(self._job_dir(item, "unstarted"))
        files = saver.save_contents("".join(traceback.format_exception(exc)), "error.log", "error")
        try:
            await self.fail_run_queue_item(item.id, redact(str(exc)), Phase.AGENT, files)
        except Exception as report_exc:
            log.error("could not report item %s as failed: %s", item.id, report_exc)
        self._jobs.pop(item.id, None)

    async def fail_run_queue_item(
        self,
        run_queue_item_id: str,
        message: str,
        phase: str | Phase,
        files: list[str] | None = None,
    ) -> None:
        """Mark an item FAILED with the phase it failed in and its error files."""
        await self._call(
            self._api.fail_run_queue_item, run_queue_item_id, message, Phase(phase), files
        )

    async def finish_thread_id(
        self, thread_id: str, exception: BaseException | None = None
    ) -> None:
        """Forget a finished job, report it if nobody did, free its slot at once."""
        tracker = self._jobs.get(thread_id)
        if tracker is not None and exception is not None and not tracker.failure_reported:
            if isinstance(exception, asyncio.CancelledError):
                exception = LaunchError("the agent stopped while the job was being set up")
            try:
                await self._report_failure(tracker, exception)
            except Exception as exc:
                log.error("could not report item %s as failed: %s", thread_id, exc)
        self._jobs.pop(thread_id, None)
        self._tasks.pop(thread_id, None)
        if tracker is not None and tracker.is_scheduler and self._deferred:
            await self._release_deferred()
        if not self._jobs:
            await self.update_status(AgentStatus.POLLING)
        self._notify()

    def _outcome(self, kind: str, tracker: JobTracker, text: str) -> None:
        self._outcomes[kind] += 1
        level = logging.WARNING if kind == "failed" else logging.INFO
        log.log(level, "item %s (run %s): %s", tracker.run_queue_item_id, tracker.run_id, text)

    # -- status --
    async def update_status(self, status: AgentStatus | str) -> None:
        """Report POLLING / RUNNING / KILLED to the backend (only when it changes)."""
        status = AgentStatus(status)
        if status == self._status:
            return
        try:
            ok = await self._call(self._api.update_launch_agent_status, self._id, status)
        except Exception as exc:
            log.warning("could not update the agent's status to %s: %s", status, exc)
            return
        if ok:
            self._status = status
        else:
            log.error("the backend refused the agent status %s", status)

    def print_status(self) -> None:
        """Log what the agent is doing and which jobs run."""
        self._last_status_print = time.monotonic()
        limit = "unlimited" if self._max_jobs == float("inf") else str(int(self._max_jobs))
        parts = [f"agent {self._name}"]
        if self.stopping:
            parts.append(f"stopping ({self._stop_reason})")
        elif self.num_running_jobs < self._max_jobs:
            parts.append(f"polling on queues {', '.join(self._queues)}")
        parts.append(f"running {self.num_running_jobs} of max {limit} jobs")
        if self.num_running_schedulers:
            parts.append(f"{self.num_running_schedulers} sweep scheduler(s)")
        if self._outcomes:
            parts.append(", ".join(f"{n} {k}" for k, n in sorted(self._outcomes.items())))
        line = "; ".join(parts)
        running = [
            f"item {t.run_queue_item_id} (run {t.run_id}, {t.elapsed:.0f}s"
            + (f", {redact(t.description)[:60]}" if t.description else "")
            + ")"
            for t in self._jobs.values()
        ]
        if running:
            line += ": " + "; ".join(running)
        log.info("%s", line)

    # -- stopping --
    async def _shutdown(self) -> None:
        if self._status is AgentStatus.KILLED:
            return
        reason = self._stop_reason or "loop ended"
        log.info("agent %s stopping: %s", self._name, reason)
        await self._release_deferred()
        if self._requeue_on_stop:
            for tracker in self._jobs.values():
                tracker.requeue_on_stop = True
                if tracker.run is not None:
                    await tracker.run.cancel(self._config.cancel_grace)
        elif self._jobs:
            log.info("waiting for %d running job(s) to finish", len(self._jobs))
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.print_status()
        await self.update_status(AgentStatus.KILLED)

    # -- helpers --
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking backend call in a worker thread."""
        return await asyncio.to_thread(fn, *args)

    def _job_dir(self, item: QueueItem, run_id: str) -> Path:
        return self._job_dir_for(item.id, run_id)

    def _job_dir_for(self, item_id: str, run_id: str) -> Path:
        return job_dir_for(self._config.jobs_dir, item_id, run_id)
