"""The launch agent: pops run queue items and runs each as a `Job`, up to `max_jobs` at once.

Its public surface is W&B's `LaunchAgent` (same names, same meaning). The agent owns the
loop: it pops while there are free slots, heartbeats, honours stop and hand-over, and
reports its status. One item's life (validate, ack, build, launch, wait, settle) is a
`Job` (agent_lib.job). Unlike the reference it never sleeps a fixed 10 s: a finished job
frees its slot at once, and an idle agent looks again after `poll_interval` (or the moment
its backend says an item arrived).

An agent is a stable identity (agent_lib.identity): restarted on the same host and data
dir (or with the same `name`), it is the same agent with a higher generation, and takes
back at once the jobs it left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from agent_lib import __version__
from agent_lib.backends.base import (
    Backend,
    Lease,
    ReapingBackend,
    RecoveringBackend,
    RenewingBackend,
    StoppingBackend,
)
from agent_lib.config import AgentConfig
from agent_lib.errors import BackendError, LaunchError, SpecError
from agent_lib.files import ItemFileSaver, job_dir_for
from agent_lib.hooks import AgentHooks, backoff_delay, is_transient
from agent_lib.identity import claim_identity
from agent_lib.job import (
    REQUEUE,
    STOP,
    TAKEN,
    Job,
    JobSupport,
    Outcome,
    OutcomeKind,
    check_sweep_state,
    generate_run_id,
)
from agent_lib.redact import install_log_redaction, redact, redact_mapping, register_secret
from agent_lib.spec import SCHEDULER_PLACEHOLDER_URI, LaunchSpec, QueueItem
from agent_lib.states import AgentStatus, Phase

log = logging.getLogger(__name__)

__all__ = ["JobAndQueue", "LaunchAgent", "generate_run_id"]


@dataclass
class JobAndQueue:
    """An item popped from a queue, with the queue's name (W&B's JobSpecAndQueue)."""

    job: QueueItem
    queue: str
    lease: Lease | None = None


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
        self._jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._deferred: dict[str, tuple[Lease, float]] = {}
        self._outcomes: Counter[str] = Counter()
        self._status: AgentStatus | None = None
        self._status_lock = asyncio.Lock()
        self._stop_reason: str | None = None
        self._requeue_on_stop = self._config.on_stop == "requeue"
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_status_print = 0.0
        self._jobs_started = 0
        self._started_at = time.monotonic()
        self._next_stop_check = 0.0
        self._stops_due = False
        self._aborts: list[asyncio.Future[None]] = []
        # A job whose task is cancelled from outside: requeue it (stop its run, resume it
        # elsewhere), or leave it running for this agent's next start to re-attach.
        self.requeue_on_cancel = self._requeue_on_stop
        register_secret(os.environ.get("WANDB_API_KEY"))
        self._identity = claim_identity(self._config.data_dir, self._config.name)
        self._id = api.create_launch_agent(
            self._entity,
            self._project,
            self._queues,
            socket.gethostname(),
            self._config.public_dict(),
            f"launch-agent@{__version__}",
            self._identity.name,
        )
        record = api.get_launch_agent(self._id)
        self._name = record.name
        self._generation = record.generation
        self._support = JobSupport(api, self._config, self._hooks, self._name, self._entity)
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
    def identity_name(self) -> str:
        """This agent's stable name on this host (agent_lib.identity), whatever name the
        backend gives it (W&B names a new agent at each start)."""
        return self._identity.name

    @property
    def generation(self) -> int:
        """This start's fencing token: one more than the same agent's previous start."""
        return self._generation

    @property
    def config(self) -> AgentConfig:
        return self._config

    @property
    def jobs(self) -> list[Job]:
        """The jobs running now."""
        return list(self._jobs.values())

    @property
    def thread_ids(self) -> list[str]:
        """The item ids of the jobs running now (W&B keys jobs by 'thread id')."""
        return list(self._jobs)

    @property
    def num_running_jobs(self) -> int:
        """Jobs running now, not counting sweep schedulers."""
        return sum(1 for job in self._jobs.values() if not job.is_scheduler)

    @property
    def num_running_schedulers(self) -> int:
        return sum(1 for job in self._jobs.values() if job.is_scheduler)

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
        next_tick = 0.0
        failures = 0
        seen_idle = False
        try:
            await self._recover()
            self.print_status()
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
                    if is_transient(exc) or isinstance(exc, BackendError):
                        log.warning("backend unavailable (%s); retrying in %.1fs", exc, delay)
                    else:
                        log.exception("unexpected error while polling; retrying in %.1fs", delay)
                    await self._idle(delay)
                    continue
                await self._check_stop_requests()
                if started:
                    seen_idle = False
                    continue
                idle = not (self._jobs or self._deferred)
                if self._config.exit_when_idle and idle:
                    # Twice in a row: an item released back to its queue while we popped
                    # (a deferred scheduler) is seen on the second look.
                    if seen_idle:
                        self._stop_reason = "queues are empty (exit_when_idle)"
                        break
                    seen_idle = True
                    continue
                seen_idle = False
                await self._idle(self._idle_timeout(next_tick))
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
            for job in self._jobs.values():
                job.cancel(REQUEUE)
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

    def _idle_timeout(self, next_tick: float) -> float:
        """How long to wait for a wake-up: `poll_interval`, but no later than the next
        heartbeat, nor the next look for stop requests while jobs run."""
        timeout = min(self._config.poll_interval, max(0.0, next_tick - time.monotonic()))
        if self._jobs:
            timeout = min(timeout, self._config.stop_check_interval)
        return timeout

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
                        self._stops_due = True  # a NOTIFY may also be a stop request
                        self._notify()
                except Exception as exc:
                    log.debug("wake-up watcher: %s", exc)
                    done.wait(1.0)

        threading.Thread(target=watch, name="launch-agent-wakeup", daemon=True).start()
        return done

    async def _renew_leases(self) -> None:
        """Keep the leases of jobs not yet acked (their first steps may wait on a slow
        host framework, e.g. a Prefect server) from expiring while this agent lives."""
        api = self._api
        if not isinstance(api, RenewingBackend):
            return
        pending = [job.lease for job in self._jobs.values() if job.lease.run_id is None]
        if pending:
            await self._support.call(api.renew_leases, pending)

    async def _check_stop_requests(self) -> None:
        """Stop, at once, the jobs someone asked to stop (`launch-agent cancel`, the Prefect
        UI): looked for every `stop_check_interval` while jobs run, and at once when a
        NOTIFY woke the agent. One query for all of this agent's jobs."""
        api = self._api
        if not self._jobs or not isinstance(api, StoppingBackend):
            return
        now = time.monotonic()
        if now < self._next_stop_check and not self._stops_due:
            return
        self._stops_due = False
        self._next_stop_check = now + self._config.stop_check_interval
        try:
            requests = await self._support.call(api.stop_requests, self._id)
        except Exception as exc:
            log.debug("could not look for stop requests: %s", exc)
            return
        for request in requests:
            job = self._jobs.get(request.item_id)
            if job is not None:
                job.cancel(STOP, request.describe())

    async def _recover(self) -> None:
        """Take back the items this agent held before it restarted (same identity).

        Their jobs are re-attached if they still run, settled with their real end if they
        ended while the agent was away, and launched now if they never started.
        """
        if not isinstance(self._api, RecoveringBackend):
            return
        leases = await self._support.call(self._api.reclaim_items, self._id, self._generation)
        if leases:
            log.info(
                "agent %s (start %d): taking back %d item(s) it held: %s",
                self._name,
                self._generation,
                len(leases),
                ", ".join(lease.item_id for lease in leases),
            )
        for lease in leases:
            self._start(Job(lease, self._support, recovered=True))
        await self._stop_taken()

    async def _stop_taken(self) -> None:
        """Stop this host's copies of jobs whose items were requeued to resume elsewhere
        while this agent was lost (`on_agent_lost: requeue`): never two copies for long."""
        api = self._api
        if not isinstance(api, RecoveringBackend):
            return
        for lease in await self._support.call(api.taken_items, self._id):
            job = self._jobs.get(lease.item_id)
            if job is not None:
                job.cancel(TAKEN)  # it forgets the item once its copy has stopped
                continue
            if await Job(lease, self._support, recovered=True).stop_copy():
                log.warning(
                    "item %s was requeued elsewhere while this agent was lost; stopped the "
                    "copy of its job that still ran here",
                    lease.item_id,
                )
            await self._support.call(api.forget_taken_item, lease)

    async def _tick(self) -> None:
        """Heartbeat, `stopPolling`, lost agents, status: the slow, periodic part."""
        try:
            record = await self._support.call(self._api.get_launch_agent, self._id)
            if record.generation > self._generation:
                self.stop(reason=f"a newer start of this agent ({record.generation}) took over")
                return
            if record.stop_polling:
                self.stop(reason="stopPolling was set on the agent's record")
                return
            await self._support.call(self._api.heartbeat, self._id)
            await self._renew_leases()
            await self._stop_taken()
            if isinstance(self._api, ReapingBackend):
                await self._support.call(self._api.reap_lost_agents)
        except Exception as exc:
            log.warning("could not reach the backend for the heartbeat: %s", exc)
        self._expire_deferred()
        self._check_handover()
        interval = self._config.status_interval / (1 + 2 * self._config.verbosity)
        if time.monotonic() - self._last_status_print >= interval:
            self.print_status()

    async def _fill_slots(self) -> bool:
        """Pop and start items while there is room. Returns whether anything started."""
        started = False
        while not self.stopping and self.num_running_jobs < self._max_jobs:
            popped = await self.get_job_and_queue()
            if popped is None:
                break
            lease = popped.lease
            assert lease is not None
            try:
                if self._over_scheduler_cap(lease):
                    continue
                await self.run_job(lease, popped.queue)
            except Exception as exc:  # the item's fault, not the backend's: fail it, go on
                await self._fail_unstartable(lease, exc)
            started = True
            self._jobs_started += 1
            self._check_handover()
        return started

    async def _fail_unstartable(self, lease: Lease, exc: Exception) -> None:
        log.exception("item %s could not be started", lease.item_id)
        message = redact(f"the agent could not start this item: {type(exc).__name__}: {exc}")
        try:
            await self._support.call(self._api.fail_run_queue_item, lease, message, Phase.AGENT)
        except Exception as report_exc:
            log.error("could not report item %s as failed: %s", lease.item_id, report_exc)

    def _check_handover(self) -> None:
        """Stop popping after `stop_after_jobs` / `stop_after_seconds`, to hand over."""
        limit_jobs = self._config.stop_after_jobs
        limit_secs = self._config.stop_after_seconds
        if limit_jobs is not None and self._jobs_started >= limit_jobs:
            self.stop(reason=f"handing over after {self._jobs_started} jobs (stop_after_jobs)")
        elif limit_secs is not None and time.monotonic() - self._started_at >= limit_secs:
            self.stop(reason=f"handing over after {limit_secs:.0f}s (stop_after_seconds)")

    def _over_scheduler_cap(self, lease: Lease) -> bool:
        """A scheduler over `max_schedulers` is not launched; it goes back to its queue
        when a scheduler slot frees (or its lease runs out)."""
        if lease.item.run_spec.get("uri") != SCHEDULER_PLACEHOLDER_URI:
            return False  # not a scheduler, whatever else it holds: no need to parse it
        try:
            is_scheduler = LaunchSpec.parse(lease.item.run_spec).is_scheduler
        except SpecError:
            return False
        if not is_scheduler or self.num_running_schedulers < self._max_schedulers:
            return False
        log.warning(
            "item %s is a sweep scheduler and %d of max_schedulers=%s run: leaving it queued",
            lease.item_id,
            self.num_running_schedulers,
            self._config.max_schedulers,
        )
        self._deferred[lease.item_id] = (lease, time.monotonic())
        return True

    def _expire_deferred(self) -> None:
        """Forget deferred schedulers whose lease has run out (the backend requeued them)."""
        horizon = time.monotonic() - self._config.lease_seconds
        for item_id in [i for i, (_, at) in self._deferred.items() if at < horizon]:
            del self._deferred[item_id]

    async def _release_deferred(self) -> None:
        """Give deferred schedulers back to their queues now that a slot (or the end) came."""
        for item_id, (lease, _) in list(self._deferred.items()):
            try:
                await self._support.call(self._api.release_run_queue_item, lease)
            except Exception as exc:
                log.warning("could not release item %s (its lease will): %s", item_id, exc)
            # Forget it only now: until it is back in its queue, the agent is not idle.
            self._deferred.pop(item_id, None)

    async def get_job_and_queue(self) -> JobAndQueue | None:
        """Pop from the queues round-robin; the queue that served moves to the back."""
        for queue in list(self._queues):
            lease = await self.pop_from_queue(queue)
            if lease is not None:
                self._queues.remove(queue)
                self._queues.append(queue)
                return JobAndQueue(lease.item, queue, lease)
        return None

    async def pop_from_queue(self, queue: str) -> Lease | None:
        """Lease an item of the run queue to run as a job (None when it is empty).

        The lease reads like W&B's popped job (`lease["runQueueItemId"]`, `["runSpec"]`).
        """
        return await self._support.call(
            self._api.pop_from_run_queue,
            queue,
            self._entity,
            self._project,
            self._id,
            self._generation,
        )

    # -- one job --
    async def run_job(
        self, job: Lease, queue: str | None = None, file_saver: ItemFileSaver | None = None
    ) -> None:
        """Start the job for a leased item and return; it runs as its own task."""
        log.info(
            "item %s from queue %r received: %s",
            job.item_id,
            queue or job.queue,
            redact_mapping(job.item.run_spec),
        )
        self._start(Job(job, self._support))
        await self.update_status(AgentStatus.RUNNING)

    def _start(self, job: Job) -> None:
        if self._requeue_on_stop and self.stopping:
            job.cancel(REQUEUE)
        self._jobs[job.item_id] = job
        self._tasks[job.item_id] = asyncio.create_task(
            self.task_run_job(job.lease.item.run_spec, job.lease, self._config, self._api, job),
            name=f"launch-job-{job.item_id}",
        )

    async def task_run_job(
        self,
        launch_spec: dict[str, Any],
        job: Lease,
        default_config: AgentConfig,
        api: Backend,
        job_tracker: Job,
    ) -> None:
        """Run one item to its end (W&B's name; the life itself is `Job.run`)."""
        exception: BaseException | None = None
        try:
            await self._hooks.run_job(job_tracker, job_tracker.run)
        except Exception as exc:  # a bug, or the backend gone past every retry
            exception = exc
            log.error(
                "item %s: its job ended without settling (%s); the item stays held, and "
                "this agent's next start settles it",
                job_tracker.item_id,
                exc,
            )
        except BaseException:
            # Cancelled from outside (Prefect cancelling the agent's run cancels every task
            # of it): settle the job anyway, outside the cancelled task. The agent's
            # shutdown waits for this.
            abort = job_tracker.abort(self.requeue_on_cancel)
            self._aborts.append(asyncio.ensure_future(abort))
            raise
        finally:
            await asyncio.shield(self.finish_thread_id(job_tracker.item_id, exception))

    async def check_sweep_state(self, launch_spec: LaunchSpec | dict[str, Any], api: Any) -> None:
        """Before launching a sweep's run, make sure the sweep still wants runs."""
        spec = launch_spec if isinstance(launch_spec, LaunchSpec) else LaunchSpec.parse(launch_spec)
        support = JobSupport(api, self._config, self._hooks, self._name, self._entity)
        await check_sweep_state(support, spec)

    async def fail_run_queue_item(
        self,
        run_queue_item_id: str,
        message: str,
        phase: str | Phase,
        files: list[str] | None = None,
    ) -> None:
        """Mark the item of one of this agent's jobs FAILED, with its phase and files."""
        job = self._jobs.get(run_queue_item_id)
        if job is None:
            raise LaunchError(f"item {run_queue_item_id} is not one of this agent's jobs")
        await self._support.call(
            self._api.fail_run_queue_item, job.lease, message, Phase(phase), files
        )

    async def finish_thread_id(
        self, thread_id: str, exception: BaseException | None = None
    ) -> None:
        """Forget a finished job and count its outcome; free its slot at once."""
        job = self._jobs.pop(thread_id, None)
        self._tasks.pop(thread_id, None)
        if job is not None and job.outcome is not None:
            self._count(job, job.outcome)
        if job is not None and job.is_scheduler and self._deferred:
            await self._release_deferred()
        if not self._jobs:
            await self.update_status(AgentStatus.POLLING)
        self._notify()

    def _count(self, job: Job, outcome: Outcome) -> None:
        self._outcomes[outcome.kind.value] += 1
        level = logging.WARNING if outcome.kind is OutcomeKind.FAILED else logging.INFO
        log.log(level, "item %s (run %s): %s", job.item_id, job.run_id, outcome.describe())

    # -- status --
    async def update_status(self, status: AgentStatus | str) -> None:
        """Report POLLING / RUNNING / KILLED to the backend (only when it changes)."""
        status = AgentStatus(status)
        # One update at a time, in order: a POLLING still in flight must not land after
        # the shutdown's KILLED. KILLED is the end: nothing after it undoes it.
        async with self._status_lock:
            if status == self._status or self._status is AgentStatus.KILLED:
                return
            try:
                ok = await self._support.call(
                    self._api.update_launch_agent_status, self._id, status
                )
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
            f"item {job.item_id} (run {job.run_id}, {job.elapsed:.0f}s"
            + (f", {redact(job.description)[:60]}" if job.description else "")
            + ")"
            for job in self._jobs.values()
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
            for job in self._jobs.values():
                job.cancel(REQUEUE)
        elif self._jobs:
            log.info("waiting for %d running job(s) to finish", len(self._jobs))
        tasks = list(self._tasks.values())
        await self._jobs_ended()
        if self._aborts:
            await asyncio.gather(*self._aborts, return_exceptions=True)
        # Every item's end is recorded: the record says so now, even if the host's own
        # bookkeeping of the jobs (Prefect's subflow runs) is slow to finish, or never does.
        await self.update_status(AgentStatus.KILLED)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.print_status()
        self._identity.release()

    async def _jobs_ended(self) -> None:
        """Wait until each job's life is over (`Job.ended`), or its task is."""

        async def ended(job: Job, task: asyncio.Task[None]) -> None:
            waiter = asyncio.ensure_future(job.ended.wait())
            try:
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

        pairs = [(self._jobs.get(key), task) for key, task in self._tasks.items()]
        await asyncio.gather(
            *(ended(job, task) if job is not None else task for job, task in pairs),
            return_exceptions=True,
        )

    # -- helpers --
    def _job_dir_for(self, item_id: str, run_id: str) -> Path:
        return job_dir_for(self._config.jobs_dir, item_id, run_id)
