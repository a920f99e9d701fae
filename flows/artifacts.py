"""Artifacts a person reads at a glance: one per job, and the agent's live status.

The job artifact is attached to the job's subflow run (no key: thousands of jobs would
otherwise crowd the artifact catalog). It shows how the job ended, how long it ran (from its
launch to its end, not the time spent in the queue or waiting for Prefect) and the last
lines of its output. The status artifact has a fixed key, so the UI's
Artifacts page always shows its latest version; a new version is written only when the
status changed, and at most every `every` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable

from prefect.artifacts import acreate_markdown_artifact
from prefect.settings import PREFECT_UI_URL

from agent_lib.job import Job, OutcomeKind
from agent_lib.redact import redact
from agent_lib.runners.base import read_log_tail
from agent_lib.states import Phase
from flows.logs import OUTPUT_NOTE
from flows.submit import submitted_by

log = logging.getLogger(__name__)

TAIL_LINES = 20
TRACEBACK = "Traceback (most recent call last)"


def _cell(value: object) -> str:
    return redact(str(value)).replace("|", "\\|").replace("\n", " ")


def job_state(job: Job) -> str:
    """The Prefect state name a job's outcome maps to."""
    outcome = job.outcome
    if outcome is None or outcome.kind is OutcomeKind.FAILED:
        return "Failed"
    if outcome.kind is OutcomeKind.FINISHED:
        return "Completed"
    return "Cancelled"


def output_tail(job: Job, lines: int = TAIL_LINES) -> str:
    """The end of the job's output: the failure's recorded tail, else its output file's.

    Never the agent's traceback (what a failure before the launch records as its tail)."""
    outcome = job.outcome
    recorded = outcome.log_tail if outcome is not None and outcome.phase is Phase.RUN else ""
    if recorded and not recorded.lstrip().startswith(TRACEBACK):
        return redact("\n".join(recorded.rstrip("\n").splitlines()[-lines:]))
    if job.launched_at is None:
        return ""
    try:
        return redact(read_log_tail(job.log_path, lines).rstrip("\n"))
    except OSError:
        return ""


def _fenced(text: str) -> str:
    """`text` as a code block whose fence no line of it can close."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def flow_run_url(flow_run_id: str) -> str:
    """Where the UI shows a flow run (its id alone when no UI address is known)."""
    ui = PREFECT_UI_URL.value()
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else flow_run_id


def job_markdown(job: Job) -> str:
    """A small table (item, what ran, exit code, duration, why it failed), then the end
    of the job's output."""
    outcome = job.outcome
    code = outcome.exit_code if outcome else None
    duration = job.ran_for
    rows: list[tuple[str, object]] = [
        ("outcome", outcome.describe() if outcome else "unknown"),
        ("item", job.item_id),
        ("queue", job.queue),
        ("run id", job.run_id or "-"),
        ("resource", job.resource or "-"),
        ("image / command", job.description or "-"),
        ("exit code", code if code is not None else "-"),
        ("duration", f"{duration:.1f} s" if duration is not None else "- (not launched)"),
    ]
    if outcome is not None and outcome.phase:
        rows.append(("failed in phase", outcome.phase))
    rows.append(("output file (on the agent's host)", str(job.log_path)))
    submitter = submitted_by(job.lease.item.run_spec)
    if submitter:
        rows.append(("submitted by", f"[flow run {submitter}]({flow_run_url(submitter)})"))
    lines = ["| | |", "|---|---|", *(f"| **{k}** | {_cell(v)} |" for k, v in rows)]
    tail = output_tail(job)
    if tail:
        shown = tail.splitlines()
        title = f"Last {len(shown)} lines of the job's output ({OUTPUT_NOTE})"
        lines += ["", f"**{title}**", "", _fenced(tail)]
    elif duration is None:
        lines += ["", "_No output: the job was not launched._"]
    else:
        lines += ["", "_The job wrote no output._"]
    return "\n".join(lines)


async def publish_job_artifact(job: Job) -> None:
    """Attach the job's summary to its subflow run; never fail the job over it."""
    try:
        await acreate_markdown_artifact(
            job_markdown(job),
            description=f"job for item {job.item_id}: {job_state(job)}",
        )
    except Exception as exc:
        log.warning("item %s: could not save its artifact: %s", job.item_id, exc)


def status_key(agent_name: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9-]+", "-", agent_name.lower()).strip("-")
    return f"launch-agent-{slug or 'status'}"


@contextlib.asynccontextmanager
async def status_artifact(key: str, render: Callable[[], str], every: float) -> AsyncIterator[None]:
    """Keep the artifact `key` showing `render()` while the block runs, and at its end."""
    last = ""
    lock = asyncio.Lock()

    async def publish() -> None:
        nonlocal last
        async with lock:
            text = render()
            if text == last:
                return
            try:
                await acreate_markdown_artifact(text, key=key, description="launch agent status")
                last = text
            except Exception as exc:
                log.debug("could not update the status artifact: %s", exc)

    async def refresh() -> None:
        while True:
            await publish()
            await asyncio.sleep(every)

    refresher = asyncio.create_task(refresh())
    try:
        yield
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await publish()


def _started(job: Job) -> str:
    """Wall-clock start, to the second (stable between refreshes, unlike a duration)."""
    return time.strftime("%H:%M:%S", time.localtime(round(time.time() - job.elapsed)))


def status_markdown(
    name: str,
    state: str,
    outcomes: dict[str, int],
    running: list[Job],
    max_jobs: int,
) -> str:
    """The agent's status: what it does, what ran, what runs now."""
    done = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "none yet"
    limit = "unlimited" if max_jobs == -1 else str(max_jobs)
    lines = [
        f"## Launch agent `{name}`",
        "",
        f"**{state}** · running {len(running)} of max {limit} jobs · done: {done}",
    ]
    if running:
        lines += ["", "| item | queue | run | started | what |", "|---|---|---|---|---|"]
        lines += [
            f"| {job.item_id} | {_cell(job.queue)} | {job.run_id or '-'} "
            f"| {_started(job)} | {_cell(job.description[:80] or '-')} |"
            for job in running
        ]
    return "\n".join(lines)
