"""One queue item's life, from its lease to its settlement, as one object.

A `Job` runs validate -> ack -> sweep check -> build -> launch -> wait -> settle and ends
with one `Outcome`: what the backend records, what the log line says, what the Prefect
subflow shows. Nothing else works it out again.

Jobs outlive their agent. A restarted agent builds a `Job` for each item it still holds
(`recovered=True`): the runner's `find` hands back the job that is still running (or that
ended while the agent was away) and the Job settles it with its real end; an item whose
job never started is launched now. Either way it runs once. A stop or requeue asked of a
job is written to its folder before the job is signalled, so a restarted agent knows a
job that ended by a signal was stopped on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import string
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agent_lib.backends.base import Backend, Lease, RecoveringBackend, StoppingBackend
from agent_lib.builders import make_builder
from agent_lib.config import AgentConfig, JobDefinition
from agent_lib.crashpoints import crash_point
from agent_lib.environment import inherited_environment, job_environment
from agent_lib.errors import LaunchError, LeaseLostError, SpecError
from agent_lib.files import ItemFileSaver, job_dir_for
from agent_lib.redact import redact, register_secret, register_secrets_in
from agent_lib.runners import LaunchContext, Runner, Status, SubmittedRun, make_runner
from agent_lib.runners.kubernetes.manifest import KUBERNETES
from agent_lib.runners.kubernetes.manifest import check_secure as check_secure_manifest
from agent_lib.spec import LOCAL_PROCESS, LaunchSpec, resume_spec
from agent_lib.states import ItemState, Phase, RunState
from agent_lib.sweeps.launch import own_scheduler
from agent_lib.wandb_jobs import ResolvedJob, ResolveSettings, is_wandb_job, resolve

if TYPE_CHECKING:
    from agent_lib.hooks import AgentHooks

log = logging.getLogger("agent_lib.agent")
T = TypeVar("T")

RUN_ID_ALPHABET = string.ascii_lowercase + string.digits
SWEEP_STATES_THAT_RUN = ("RUNNING", "PAUSED")
# resource_args keys an item may not set in secure mode, whatever the resource.
SECURE_REFUSED_RESOURCE_KEYS = frozenset({"env", "cwd", "workdir", "working_dir", "entrypoint"})
CANCEL_MARKER = "cancel.json"
LAUNCH_RECORD = "launch.json"
# Why the agent stopped a job (written to CANCEL_MARKER before the job is signalled).
STOP = "stop"  # someone asked
REQUEUE = "requeue"  # the agent stops with on_stop: requeue; the job resumes elsewhere
TAKEN = "taken"  # requeued elsewhere while this agent was lost: stop the copy here
TIMEOUT = "timeout"  # it ran longer than its max_runtime
START_TIMEOUT = "start-timeout"  # it stayed `starting` longer than start_timeout
CANCEL_REASONS = (STOP, REQUEUE, TAKEN, TIMEOUT, START_TIMEOUT)


def generate_run_id(length: int = 8) -> str:
    """A W&B-style run id: 8 lowercase letters and digits."""
    return "".join(secrets.choice(RUN_ID_ALPHABET) for _ in range(length))


class OutcomeKind(StrEnum):
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    PREEMPTED = "preempted"  # preempted, and not requeued (resumed too often)
    REQUEUED = "requeued"  # preempted, and pushed again to resume as the same run
    NOT_LAUNCHED = "not launched"  # the lease went elsewhere before the ack


@dataclass(frozen=True)
class Outcome:
    """How one item ended. `phase` and `log_tail` are set for failures."""

    kind: OutcomeKind
    message: str = ""
    phase: Phase | None = None
    exit_code: int | None = None
    log_tail: str = ""

    def describe(self) -> str:
        """The line people read: `FAILED in phase run: the job exited with code 3`."""
        if self.kind is OutcomeKind.FAILED:
            return f"FAILED in phase {self.phase}: {self.message}"
        head = self.kind.value
        return f"{head}: {self.message}" if self.message else head


@dataclass
class JobSupport:
    """What a Job needs from its agent."""

    api: Backend
    config: AgentConfig
    hooks: AgentHooks
    agent_name: str
    entity: str | None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking backend call in a worker thread, so the loop never stalls."""
        return await asyncio.to_thread(fn, *args)


class Job:
    """One item from its lease to its settlement. `await job.run()` returns its Outcome."""

    def __init__(self, lease: Lease, support: JobSupport, recovered: bool = False) -> None:
        self.lease = lease
        self.recovered = recovered
        self._support = support
        self.spec: LaunchSpec | None = None
        self.run_id: str | None = lease.run_id
        self.entity: str | None = support.entity
        self.project: str | None = None
        self.resource: str | None = None
        self.is_scheduler = False
        self.description = ""
        self.submitted: SubmittedRun | None = None
        self.wandb_job: ResolvedJob | None = None  # a W&B job artifact, once resolved
        self.phase = Phase.AGENT
        self.status: Status | None = None
        self.outcome: Outcome | None = None
        self.settled = False
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        self.ended_wall: float | None = None
        self._cancel_reason: str | None = None
        self._stop_message: str | None = None
        self._cancel_asked = asyncio.Event()
        # Set once `run` is over: the item's end is recorded (or cannot be, by this agent).
        self.ended = asyncio.Event()
        self.job_dir = job_dir_for(support.config.jobs_dir, lease.item_id, "pending")
        register_secrets_in(lease.item.run_spec)  # before anything can log or save it

    # -- what people and hosts read --
    @property
    def item_id(self) -> str:
        return self.lease.item_id

    @property
    def queue(self) -> str:
        return self.lease.queue

    @property
    def log_path(self) -> Path:
        return self.job_dir / "output.log"

    @property
    def elapsed(self) -> float:
        return (self.ended_at or time.monotonic()) - self.started_at

    @property
    def ran_for(self) -> float | None:
        """How long the job itself ran: from its launch to its end (or now); None if it
        never launched. Unlike `elapsed`, it leaves out waiting on the agent or Prefect."""
        start = self.launched_at
        if start is None:
            return None
        end = self.ended_wall or time.time()
        return max(0.0, end - start)

    @property
    def requeue_on_stop(self) -> bool:
        return self._cancel_reason == REQUEUE

    # -- the life --
    async def run(self) -> Outcome:
        """Run the item to its end and record that end with the backend."""
        try:
            return await self._live()
        finally:
            self.ended.set()

    async def _live(self) -> Outcome:
        step = self._support.hooks.run_step
        retries = self._support.config.launch_retries
        try:
            await step(self, "validate", self._validate)
            if not self.recovered:
                crash_point("popped")
                await step(self, "ack", self._ack, retries=retries)
                crash_point("acked")
            found = await self._runner().find(self._context(None)) if self.recovered else None
            if found is None:
                await step(self, "check sweep", self._check_sweep)
                if self.spec is not None and is_wandb_job(self.spec, self._support.config.jobs):
                    await step(self, "resolve job", self._resolve_job)  # a W&B job artifact
                self.phase = Phase.BUILD
                image = await step(self, "build", self._build)
                self.phase = Phase.AGENT
                await step(self, "launch", lambda: self._launch(image), retries=retries)
            else:
                self.submitted = found
                self.description = f"re-attached {self.resource} run {found.id}"
                log.info("item %s: re-attached to run %s", self.item_id, self.run_id)
            crash_point("launched")
            self.phase = Phase.RUN
            status = await step(self, "wait", self._wait)
            crash_point("ended")
            outcome = await self._decide(status)
        except LeaseLostError as exc:
            return self._end(Outcome(OutcomeKind.NOT_LAUNCHED, str(exc)))
        except Exception as exc:
            outcome = await self._failure(exc)
        self._end(outcome)
        api = self._support.api
        if self._cancel_reason == TAKEN and isinstance(api, RecoveringBackend):
            await self._support.call(api.forget_taken_item, self.lease)
            return outcome
        name = "report failure" if outcome.kind is OutcomeKind.FAILED else "settle"
        await step(self, name, self._settle, retries=retries)
        return self.outcome or outcome

    async def abort(self, requeue: bool) -> None:
        """Settle a job whose own task was cancelled from outside (a host framework
        tearing the agent down, e.g. Prefect cancelling the agent's flow run): with
        `requeue`, stop its run and requeue the item to resume; otherwise leave the run
        going, held by this agent, for its next start to re-attach. Plain asyncio only."""
        if self.outcome is not None or self.submitted is None or not requeue:
            return
        if not self.lease.run_id:
            return  # not acked: the lease returns the item
        try:
            self.cancel(REQUEUE)
            await self._cancel_run(REQUEUE)
            outcome = await self._decide(await self.submitted.wait())
            self._end(outcome)
            await self._settle()
            log.info("item %s (run %s): %s", self.item_id, self.run_id, outcome.describe())
        except Exception as exc:
            log.error("item %s: could not requeue it while stopping: %s", self.item_id, exc)

    async def stop_copy(self) -> bool:
        """For an item taken from this agent while it was lost: stop the copy of its job
        that still runs here, if there is one. Returns whether there was."""
        try:
            await self._validate()
        except Exception:
            return False  # a spec that does not validate never launched anything
        found = await self._runner().find(self._context(None))
        if found is None:
            return False
        if not (await found.get_status()).state.is_terminal:
            self.submitted = found
            await self._cancel_run(TAKEN)
        await found.cleanup()
        return True

    def cancel(self, reason: str = STOP, message: str | None = None) -> None:
        """Stop the job now: `stop` (asked; `message` says by whom), `requeue` (to resume
        as the same run), or one of the other CANCEL_REASONS. The first reason stands."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
            self._stop_message = message
            self._cancel_asked.set()

    def _end(self, outcome: Outcome) -> Outcome:
        self.outcome = outcome
        self.ended_at = time.monotonic()
        self.ended_wall = time.time()
        return outcome

    # -- the steps --
    async def _validate(self) -> None:
        config = self._support.config
        spec = LaunchSpec.parse(self.lease.item.run_spec)
        register_secret(spec.wandb_api_key)
        check_secure(spec, config)
        self.spec = spec
        self.run_id = self.lease.run_id or spec.run_id or generate_run_id()
        self.entity = spec.entity or self._support.entity
        self.project = spec.project
        self.is_scheduler = spec.is_scheduler
        self.resource = spec.resource_or(config.default_resource)
        self._runner()  # an unknown resource fails here, before anything runs
        self.job_dir = job_dir_for(config.jobs_dir, self.item_id, self.run_id)

    async def _ack(self) -> None:
        assert self.run_id is not None
        claimed = await self._support.call(
            self._support.api.ack_run_queue_item, self.lease, self.run_id
        )
        if claimed is None:
            raise LeaseLostError(
                "its lease expired and the item went back to the queue before the ack; "
                "not launching it here"
            )
        self.lease = claimed
        if self.job_dir.exists():  # left by an earlier queue database: not this job's
            aside = self.job_dir.with_name(f"{self.job_dir.name}.old-{int(time.time())}")
            log.warning("item %s: moving a stale job folder aside to %s", self.item_id, aside)
            self.job_dir.rename(aside)

    async def _check_sweep(self) -> None:
        assert self.spec is not None
        await check_sweep_state(self._support, self.spec)

    async def _resolve_job(self) -> None:
        """A W&B job artifact (`job: entity/project/name:alias`): fetch it, put its code in
        place, make its environment (agent_lib/wandb_jobs.py). Its failures: phase agent."""
        spec, config = self.spec, self._support.config
        assert spec is not None and self.resource is not None
        provider = getattr(self._support.api, "job_environment", None)
        credentials = dict(provider(spec)) if provider else {}
        for name in ("WANDB_BASE_URL", "WANDB_API_KEY"):
            if name not in credentials and os.environ.get(name):
                credentials[name] = os.environ[name]
        if spec.wandb_api_key:
            credentials["WANDB_API_KEY"] = spec.wandb_api_key
        settings = ResolveSettings(
            job_dir=self.job_dir,
            cache_dir=config.data_dir,
            credentials=credentials,
            host_env=inherited_environment(config.inherit_env),
            builder_type=str({**config.builder, **(spec.builder or {})}.get("type") or "noop"),
            pip_args=tuple(str(a) for a in config.builder.get("pip_args") or ()),
        )
        self.wandb_job = await resolve(spec, self.resource, settings)

    async def _build(self) -> str | None:
        assert self.spec is not None
        spec = self.wandb_job.build_spec(self.spec) if self.wandb_job else self.spec
        if self.resource == LOCAL_PROCESS:
            return spec.image  # local processes run without an image, as in W&B
        builder = make_builder(self._support.config, spec.builder)
        return await builder.build_image(spec, self.job_dir)

    async def _launch(self, image: str | None) -> None:
        context = self._context(image)
        self.job_dir.mkdir(parents=True, exist_ok=True)
        if not (self.job_dir / LAUNCH_RECORD).exists():
            (self.job_dir / LAUNCH_RECORD).write_text(json.dumps({"launched_at": time.time()}))
        self.submitted = await self._runner().run(context)
        self.description = " ".join(context.command) if context.command else (context.image or "")
        log.info(
            "item %s: launched run %s on %s: %s",
            self.item_id,
            self.run_id,
            self.resource,
            redact(self.description),
        )

    async def _wait(self) -> Status:
        """Wait for the job's end; meanwhile honour stop requests, the maximum run time and
        the start timeout. Woken at once by `cancel`, never by a fixed sleep alone."""
        run = self.submitted
        assert run is not None
        config = self._support.config
        ended = asyncio.ensure_future(run.wait())
        asked = asyncio.ensure_future(self._cancel_asked.wait())
        waiting: set[asyncio.Future[Any]] = {ended, asked}
        started_at = time.monotonic()
        deadline = self._runtime_deadline()
        stop_seen_at: float | None = None
        # On our own queues a stop request reaches the agent, which calls `cancel` at once;
        # elsewhere (W&B) the job is asked, and killed after stopped_run_timeout.
        polls_for_stop = not isinstance(self._support.api, StoppingBackend)
        try:
            while True:
                timeout = config.stop_check_interval
                if deadline is not None and self._cancel_reason is None:
                    timeout = max(0.0, min(timeout, deadline - time.monotonic()))
                await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if ended.done():
                    self.status = ended.result()
                    return self.status
                if asked in waiting and asked.done():
                    waiting.discard(asked)
                    assert self._cancel_reason is not None
                    await self._cancel_run(self._cancel_reason)
                    continue
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.cancel(TIMEOUT)
                    continue
                current = await run.get_status()
                limit = config.start_timeout
                if current.state is RunState.STARTING and limit and now - started_at > limit:
                    self.cancel(START_TIMEOUT)
                    continue
                if polls_for_stop and stop_seen_at is None and await self._should_stop():
                    stop_seen_at = now
                    log.info(
                        "item %s: a stop was requested; cancelling run %s in %.0fs",
                        self.item_id,
                        self.run_id,
                        config.stopped_run_timeout,
                    )
                if stop_seen_at is not None and now - stop_seen_at >= config.stopped_run_timeout:
                    self.cancel(STOP)
        finally:
            for future in (ended, asked):
                if not future.done():
                    future.cancel()

    def _runtime_deadline(self) -> float | None:
        """When the job has run for its `max_runtime` (item's, else the agent's), on the
        monotonic clock; counted from its launch, also for a job re-attached after a restart."""
        assert self.spec is not None
        limit = self.spec.max_runtime or self._support.config.max_runtime
        if not limit:
            return None
        launched = self.launched_at
        ran_for = max(0.0, time.time() - launched) if launched is not None else 0.0
        return time.monotonic() + limit - ran_for

    @property
    def launched_at(self) -> float | None:
        """When the job was launched (wall clock), also across an agent restart; None
        if it never was."""
        try:
            data = json.loads((self.job_dir / LAUNCH_RECORD).read_text())
        except (OSError, ValueError):
            return None
        value = data.get("launched_at") if isinstance(data, dict) else None
        return float(value) if isinstance(value, int | float) else None

    async def _cancel_run(self, reason: str) -> None:
        """Write down why, then stop the run: a restarted agent reads the why."""
        assert self.submitted is not None
        record = {"reason": reason, "message": self._stop_message, "at": time.time()}
        with contextlib.suppress(OSError):
            self.job_dir.mkdir(parents=True, exist_ok=True)
            (self.job_dir / CANCEL_MARKER).write_text(json.dumps(record))
        log.info("item %s: stopping run %s (%s)", self.item_id, self.run_id, reason)
        await self.submitted.cancel(self._support.config.cancel_grace)

    async def _should_stop(self) -> bool:
        assert self.run_id is not None
        try:
            return bool(
                await self._support.call(
                    self._support.api.run_should_stop, self.entity, self.project, self.run_id
                )
            )
        except Exception as exc:
            log.debug("could not ask whether run %s should stop: %s", self.run_id, exc)
            return False

    # -- the outcome --
    async def _decide(self, status: Status) -> Outcome:
        """The run's final status as the item's outcome (decided here, and only here)."""
        code = status.exit_code
        if status.state is RunState.FINISHED:
            return Outcome(OutcomeKind.FINISHED, f"finished in {self.elapsed:.1f}s", None, code)
        reason, message = self._cancel_reason, self._stop_message
        if reason is None:
            reason, message = self._recorded_cancel()
        if reason == TAKEN:
            message = "the item was requeued elsewhere while this agent was lost"
            return Outcome(OutcomeKind.STOPPED, message + "; its copy here was stopped", None, code)
        if reason == TIMEOUT:
            assert self.spec is not None
            limit = self.spec.max_runtime or self._support.config.max_runtime
            text = f"the job exceeded its maximum run time of {limit:g} s and was stopped"
            return Outcome(OutcomeKind.FAILED, text, Phase.RUN, code, await self._log_tail())
        if reason == START_TIMEOUT:
            text = f"the job did not start within {self._support.config.start_timeout:g} s"
            return Outcome(OutcomeKind.FAILED, text, Phase.RUN, code, await self._log_tail())
        preempted = status.state is RunState.PREEMPTED or (
            reason is None and code in self._support.config.preempt_exit_codes
        )
        if reason == REQUEUE:
            return await self._preempted(code, "the agent stopped and handed its jobs back")
        if preempted:
            return await self._preempted(code, status.reason or f"exit code {code}")
        if status.state is RunState.STOPPED or reason == STOP:
            return Outcome(OutcomeKind.STOPPED, message or "stopped on request", None, code)
        text = f"the job exited with code {code}"
        if status.reason:
            text += f" ({status.reason})"
        if code is None and status.reason:  # it never ran to an exit (an image pull failed)
            text = f"the job failed: {status.reason}"
        return Outcome(OutcomeKind.FAILED, redact(text), Phase.RUN, code, await self._log_tail())

    async def _preempted(self, code: int | None, why: str) -> Outcome:
        """Requeue to resume as the same run, or fail once it was resumed too often."""
        assert self.spec is not None
        limit = self._support.config.max_resume_count
        if self.spec.resume_count >= limit:
            text = (
                f"the job was preempted ({why}) and not requeued again: it was already resumed "
                f"{self.spec.resume_count} times (max_resume_count {limit})"
            )
            return Outcome(OutcomeKind.FAILED, text, Phase.RUN, code, await self._log_tail())
        return Outcome(OutcomeKind.REQUEUED, f"preempted ({why}); requeued to resume", None, code)

    def _recorded_cancel(self) -> tuple[str | None, str | None]:
        """A stop or requeue written down by an earlier incarnation of the agent."""
        try:
            data = json.loads((self.job_dir / CANCEL_MARKER).read_text())
        except (OSError, ValueError):
            return None, None
        if not isinstance(data, dict) or data.get("reason") not in CANCEL_REASONS:
            return None, None
        message = data.get("message")
        return str(data["reason"]), message if isinstance(message, str) else None

    async def _failure(self, exc: BaseException) -> Outcome:
        phase = exc.phase if isinstance(exc, LaunchError) else self.phase
        message = redact(str(exc) or type(exc).__name__)
        if phase is Phase.RUN and self.submitted is not None:
            tail = await self._log_tail()
        elif isinstance(exc, LaunchError):
            tail = f"{message}\n"  # the job's own error: its message says it all
        else:
            tail = "".join(traceback.format_exception(exc))  # the agent's: keep the trace
        if not isinstance(exc, LaunchError):
            log.error("item %s: %s", self.item_id, tail.rstrip())
        code = self.status.exit_code if self.status else None
        return Outcome(OutcomeKind.FAILED, message, phase, code, redact(tail))

    async def _log_tail(self) -> str:
        assert self.submitted is not None
        try:
            return await self.submitted.get_logs(tail=self._support.config.log_tail_lines)
        except Exception as exc:
            return f"<could not read the job's output: {exc}>"

    async def _settle(self) -> None:
        """Record the outcome with the backend; release what the run kept only after."""
        outcome = self.outcome
        assert outcome is not None
        held = await self._record(outcome)
        self.settled = held
        if not held:
            log.warning(
                "item %s: its outcome (%s) was not recorded: this agent no longer holds the "
                "item (a newer start of it, or another agent, settled it)",
                self.item_id,
                outcome.describe(),
            )
            return
        if self.submitted is not None:
            try:
                await self.submitted.cleanup()
            except Exception as exc:
                log.warning("item %s: could not clean up its run: %s", self.item_id, exc)

    async def _record(self, outcome: Outcome) -> bool:
        api, call, lease = self._support.api, self._support.call, self.lease
        if outcome.kind is OutcomeKind.FAILED:
            assert outcome.phase is not None
            files = self._save_error_log(outcome.log_tail)
            crash_point("reporting")
            return await call(
                api.fail_run_queue_item,
                lease,
                outcome.message,
                outcome.phase,
                files,
                outcome.exit_code,
            )
        if outcome.kind is OutcomeKind.REQUEUED:
            assert self.spec is not None
            spec = resume_spec(self.spec.to_wire(), self.run_id)
            new_id = await call(api.requeue_run_queue_item, lease, spec, outcome.exit_code)
            if new_id is None:
                return False
            self.outcome = replace(
                outcome, message=f"requeued as item {new_id} to resume run {self.run_id}"
            )
            return True
        state = {
            OutcomeKind.FINISHED: ItemState.FINISHED,
            OutcomeKind.STOPPED: ItemState.STOPPED,
            OutcomeKind.PREEMPTED: ItemState.PREEMPTED,
        }[outcome.kind]
        return await call(api.complete_run_queue_item, lease, state, outcome.exit_code)

    def _save_error_log(self, contents: str) -> list[str] | None:
        """error/error.log in the job folder; a failure to save never stops the report."""
        try:
            return ItemFileSaver(self.job_dir).save_contents(contents, "error.log", "error")
        except OSError as exc:
            log.warning("item %s: could not save error.log: %s", self.item_id, exc)
            return None

    # -- helpers --
    def _runner(self) -> Runner:
        assert self.resource is not None
        return make_runner(self.resource, self._support.config)

    def _context(self, image: str | None) -> LaunchContext:
        spec, run_id = self.spec, self.run_id
        assert spec is not None and run_id is not None and self.resource is not None
        config = self._support.config
        command, definition = command_for(spec, config)
        resolved = self.wandb_job
        if resolved is not None:
            command, definition = resolved.command(spec), None
        env = dict(config.job_env)
        env.update(definition.env if definition else {})
        host_env = inherited_environment(config.inherit_env)
        if resolved is not None:
            env.update(resolved.environment(host_env.get("PATH")))
        env.update(
            job_environment(
                spec,
                self.item_id,
                self.queue,
                run_id,
                self._support.entity,
                job_artifact=resolved.name if resolved else None,
                image=image or (resolved.image if resolved else None),
            )
        )
        env.update(self._credentials(spec))
        if self.is_scheduler:  # on our own queues, our scheduler (agent_lib.sweeps.launch)
            own = own_scheduler(self._support.api, spec, config.jobs_dir)
            if own is not None:
                command, definition = own[0], None
                env.update(own[1])
        return LaunchContext(
            item_id=self.item_id,
            queue=self.queue,
            run_id=run_id,
            spec=spec,
            command=command,
            image=image or (definition.image if definition else None),
            env=env,
            job_dir=self.job_dir,
            log_path=self.log_path,
            resource_args=spec.args_for(self.resource),
            labels={
                "launch-agent.agent": self._support.agent_name,
                "launch-agent.queue": self.queue,
                "launch-agent.item": self.item_id,
                "launch-agent.run": run_id,
            },
            host_env=host_env,
        )

    def _credentials(self, spec: LaunchSpec) -> dict[str, str]:
        """Credentials the job gets by environment only (never on its command line)."""
        provider = getattr(self._support.api, "job_environment", None)
        env: dict[str, str] = dict(provider(spec)) if provider else {}
        if spec.wandb_api_key:
            env["WANDB_API_KEY"] = spec.wandb_api_key
        register_secrets_in(env)  # WANDB_API_KEY and the like, by name
        return env


def command_for(spec: LaunchSpec, config: AgentConfig) -> tuple[list[str], JobDefinition | None]:
    """The argv to run: a named job's entry point or the override, then the args."""
    definition = config.jobs.get(spec.job) if spec.job else None
    entry = spec.overrides.entry_point or (definition.entry_point if definition else [])
    args = spec.overrides.args or (definition.args if definition else [])
    return [*entry, *args], definition


def check_secure(spec: LaunchSpec, config: AgentConfig) -> None:
    """In secure mode only the agent's named jobs run, and an item changes only what its
    job allows: `run_config` always, `args` with `allow_args`. Nothing else that decides
    what runs or with what rights: no entry point, image, source, environment, working
    directory, local-process resource args, or pod keys that reach the host."""
    if not config.secure_mode:
        return
    if not spec.job:
        named = ", ".join(sorted(config.jobs)) or "none are configured"
        raise SpecError(f"secure_mode: only named jobs run on this agent; set `job` ({named})")
    definition = config.jobs.get(spec.job)
    if definition is None:
        raise SpecError(f"secure_mode: job {spec.job!r} is not one of this agent's jobs")
    if spec.overrides.entry_point:
        raise SpecError(
            "secure_mode: this agent does not allow overriding the entry point "
            "(overrides.entry_point); run a named job instead"
        )
    if spec.overrides.args and not definition.allow_args:
        raise SpecError(
            f"secure_mode: job {spec.job!r} does not allow changing its args (overrides.args); "
            "its definition must say allow_args: true"
        )
    if spec.image and spec.image != definition.image:
        raise SpecError(
            "secure_mode: an item may not choose the image (docker.docker_image / image_uri)"
        )
    if spec.git is not None or spec.builder:
        raise SpecError("secure_mode: an item may not give source to build (git / builder)")
    if definition.resource and spec.resource and spec.resource != definition.resource:
        raise SpecError(
            f"secure_mode: job {spec.job!r} runs on {definition.resource}, not {spec.resource}"
        )
    for resource, args in spec.resource_args.items():
        _check_secure_resource_args(resource, args)
        if resource == KUBERNETES:
            check_secure_manifest(args, config.kubernetes_allow)


def _check_secure_resource_args(resource: str, args: dict[str, Any]) -> None:
    if resource == LOCAL_PROCESS and args:
        raise SpecError(
            f"secure_mode: resource_args.{resource} is not allowed "
            f"(it sets {', '.join(sorted(map(str, args)))})"
        )
    for key in args:
        if str(key).replace("-", "_").lower() in SECURE_REFUSED_RESOURCE_KEYS:
            raise SpecError(f"secure_mode: resource_args.{resource}.{key} is not allowed")


async def check_sweep_state(support: JobSupport, spec: LaunchSpec) -> None:
    """Before launching a sweep's run, make sure the sweep still wants runs."""
    if not spec.sweep_id:
        return
    try:
        state = await support.call(
            support.api.get_sweep_state,
            spec.sweep_id,
            spec.entity or support.entity,
            spec.project,
        )
    except Exception as exc:
        log.debug("could not read the state of sweep %s: %s", spec.sweep_id, exc)
        state = None
    if state not in SWEEP_STATES_THAT_RUN:
        raise LaunchError(
            f"sweep {spec.sweep_id} is in state {state or 'unknown'}, so its run was not launched"
        )
