"""Runs a job as a Kubernetes Job (W&B's `kubernetes` resource), through the API.

`run` creates the job's Secret (its API key and other secret variables), then the Job
(named after the job, labelled with the agent, its queue, item and run), then makes the
Job the Secret's owner, so Kubernetes deletes the key with the Job. A second `run` for the
same job finds the Job by its name and adopts it; `find` does the same without creating
anything. The Job's end comes from watch streams (`cluster.py`); the Job stays, held by
the agent's finalizer, until `cleanup` (the item is settled): until then it is how a
restarted agent learns how the job ended.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from agent_lib.config import AgentConfig
from agent_lib.errors import LaunchError
from agent_lib.runners.base import LaunchContext, Status, SubmittedRun, read_log_tail
from agent_lib.runners.kubernetes import manifest as m
from agent_lib.runners.kubernetes.cluster import (
    MERGE_PATCH,
    Cluster,
    Tracker,
    api_error,
    cluster_for,
    on_cluster,
    release,
    to_dict,
)

log = logging.getLogger("agent_lib.runners.kubernetes")


@dataclass(frozen=True)
class _Plan:
    """Where the job's Job lives and what it is called."""

    namespace: str
    name: str
    secret: str


def _args_only(context: LaunchContext) -> bool:
    """A spec with only `overrides.args` keeps the image's ENTRYPOINT (Kubernetes `command`)
    and sets its CMD (`args`), as the container runner does."""
    spec = context.spec
    return (
        bool(context.command)
        and not spec.overrides.entry_point
        and not spec.job
        and context.command == list(spec.overrides.args)
    )


class KubernetesRunner:
    """Starts a job's Kubernetes Job, or finds the one started for it before (by name).

    `run` and `find` are idempotent per job (item + run id): a restarted agent gets the Job
    that is still going, or that ended while no agent watched, with its pods' exit codes.
    """

    resource = m.KUBERNETES

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._cluster: Cluster = cluster_for(config.kube_config, config.kube_context)

    # -- names --
    async def _plan(self, context: LaunchContext) -> _Plan:
        args = context.resource_args
        default = self._config.kube_namespace or self._cluster.default_namespace
        name = m.name_of(args, m.job_name(self._config.jobs_dir, context.item_id, context.run_id))
        return _Plan(m.namespace_of(args, default), name, m.secret_name(name))

    def _owned_by(self, job: dict[str, Any], context: LaunchContext) -> bool:
        annotations = (job.get("metadata") or {}).get("annotations") or {}
        return (
            annotations.get(f"{m.LABEL_PREFIX}item") == context.item_id
            and annotations.get(f"{m.LABEL_PREFIX}run") == context.run_id
        )

    # -- the Runner protocol --
    async def find(self, context: LaunchContext) -> KubernetesRun | None:
        """The Job started earlier for this job (running or ended), or None. Creates nothing."""
        return await on_cluster(self._find(context))

    async def _find(self, context: LaunchContext) -> KubernetesRun | None:
        api = await self._cluster.client()
        plan = await self._plan(context)
        batch = await self._cluster.batch()
        try:
            job = await batch.read_namespaced_job(plan.name, plan.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise api_error(f"cannot look up Job {plan.name}", exc) from exc
        if not self._owned_by(to_dict(api, job), context):
            return None
        return await self._handle(context, plan, adopted=True)

    async def run(self, context: LaunchContext) -> KubernetesRun:
        """Create the job's Secret and Job, or adopt the Job already there."""
        m.check_host_access(context.resource_args, self._config.kubernetes_allow)
        return await on_cluster(self._run(context))

    async def _run(self, context: LaunchContext) -> KubernetesRun:
        api = await self._cluster.client()
        plan = await self._plan(context)
        labels, annotations = m.agent_labels(context.labels)
        secrets = m.secret_env(context.env)
        job = m.build_job(
            context.resource_args,
            name=plan.name,
            namespace=plan.namespace,
            image=context.image,
            command=context.command,
            args_only=_args_only(context),
            env=context.env,
            labels=labels,
            annotations=annotations,
            run_id=context.run_id,
            secret=plan.secret,
        )
        batch, core = await self._cluster.batch(), await self._cluster.core()
        if secrets:
            await self._ensure_secret(core, plan, secrets, labels, annotations, context)
        adopted = False
        try:
            created = to_dict(api, await batch.create_namespaced_job(plan.namespace, job))
        except ApiException as exc:
            if exc.status != 409:
                raise api_error(f"cannot create Job {plan.name} in {plan.namespace}", exc) from exc
            created = to_dict(api, await batch.read_namespaced_job(plan.name, plan.namespace))
            if not self._owned_by(created, context):
                raise LaunchError(
                    f"a Job named {plan.name!r} already exists in namespace {plan.namespace!r} "
                    "and is not this item's: choose another metadata.name, or delete that Job"
                ) from exc
            adopted = True
            log.info("item %s: Job %s already exists; following it", context.item_id, plan.name)
        if secrets:
            await self._own_secret(core, plan, created)
        return await self._handle(context, plan, adopted)

    async def _ensure_secret(
        self,
        core: Any,
        plan: _Plan,
        data: dict[str, str],
        labels: dict[str, str],
        annotations: dict[str, str],
        context: LaunchContext,
    ) -> None:
        body = m.build_secret(plan.secret, plan.namespace, data, labels, annotations)
        try:
            await core.create_namespaced_secret(plan.namespace, body)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise api_error(f"cannot create Secret {plan.secret}", exc) from exc
        try:  # left by an earlier attempt at this job: make it hold today's values
            existing = await core.read_namespaced_secret(plan.secret, plan.namespace)
            if not self._owned_by(to_dict(core.api_client, existing), context):
                raise LaunchError(
                    f"a Secret named {plan.secret!r} already exists in namespace "
                    f"{plan.namespace!r} and is not this item's: choose another metadata.name"
                )
            await core.replace_namespaced_secret(plan.secret, plan.namespace, body)
        except ApiException as exc:
            raise api_error(f"cannot update Secret {plan.secret}", exc) from exc

    async def _own_secret(self, core: Any, plan: _Plan, job: dict[str, Any]) -> None:
        patch = {"metadata": {"ownerReferences": [m.owner_reference(job)]}}
        try:
            await core.patch_namespaced_secret(
                plan.secret, plan.namespace, patch, _content_type=MERGE_PATCH
            )
        except ApiException as exc:
            raise api_error(f"cannot make Job {plan.name} own Secret {plan.secret}", exc) from exc

    async def _handle(self, context: LaunchContext, plan: _Plan, adopted: bool) -> KubernetesRun:
        context.log_path.parent.mkdir(parents=True, exist_ok=True)
        monitor = self._cluster.monitor(plan.namespace, m.agent_selector(context.labels))
        tracker = monitor.trackers.get(plan.name)
        if tracker is None:  # one tracker per Job in a process, shared by every handle
            tracker = Tracker(monitor, plan.name, context.log_path, rewrite_log=adopted)
            await tracker.start()
        return KubernetesRun(
            self._cluster, tracker, plan.secret, context, self._config.remove_containers
        )


class KubernetesRun(SubmittedRun):
    """A handle on one Job. Its state and end come from the cluster's watches; its output
    is in the job folder. The Job stays (the agent's finalizer) until `cleanup`."""

    def __init__(
        self,
        cluster: Cluster,
        tracker: Tracker,
        secret: str,
        context: LaunchContext,
        delete: bool,
    ) -> None:
        self._cluster = cluster
        self._tracker = tracker
        self._secret = secret
        self._log_path = context.log_path
        self._delete = delete
        self._cleaned = False

    @property
    def id(self) -> str:
        return f"{self._tracker.namespace}/{self._tracker.name}"

    @property
    def name(self) -> str:
        return self._tracker.name

    @property
    def namespace(self) -> str:
        return self._tracker.namespace

    async def get_status(self) -> Status:
        done = self._tracker.done
        if done.done():
            return done.result()
        return Status(self._tracker.state)

    async def wait(self) -> Status:
        return await asyncio.shield(asyncio.wrap_future(self._tracker.done))

    async def cancel(self, grace: float = 10.0) -> None:
        """Delete the Job (foreground: its pods go first, SIGTERM then SIGKILL after
        `grace`); the run ends `stopped`."""
        if self._tracker.done.done():
            return
        await on_cluster(self._tracker.cancel(grace))
        await self.wait()

    async def get_logs(self, tail: int | None = None) -> str:
        return read_log_tail(self._log_path, tail)

    async def cleanup(self) -> None:
        """Once the item is settled: release the Job (delete it, unless
        `remove_containers: false` keeps it) and delete the job's Secret. A Job that still
        runs is left alone with a warning: cleanup never kills a job (cancel does)."""
        if self._cleaned:
            return
        if not self._tracker.done.done():
            log.warning("Job %s: still running at cleanup; left alone", self.id)
            return
        await on_cluster(
            release(self._cluster, self.namespace, self.name, self._secret, self._delete)
        )
        self._cleaned = True
