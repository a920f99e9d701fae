"""A sweep's scheduler: the process a scheduler item runs on our own (SQL) queues.

`python -m agent_lib.sweeps.scheduler --sweep ID --jobs-dir DIR`, started by the agent for a
scheduler item (never by hand); the queue database's URL comes in `DATABASE_URL` (never on
the command line), its own item id in `WANDB_LAUNCH_TRACE_ID`.

It claims the sweep (the last scheduler to start owns it), rebuilds the Optuna study from
the sweep's stored runs, then, every `scheduler.poll_interval` seconds:

- reads each open run's item state and metric (agent_lib.sweeps.metrics), reports new
  steps to the study, and stops a run the Hyperband pruner gives up on (its item ends
  STOPPED, "pruned by hyperband at step N");
- tells the study how each ended run did;
- while the sweep is RUNNING, keeps `scheduler.num_workers` runs queued or running: each new
  run's trial row and its item's push are one transaction, so a scheduler that dies at any
  point leaves no run half-asked, and the next one never repeats a parameter set;
- PAUSED: asks for nothing, follows its runs. FINISHED (stopped): follows its running runs to
  their end, then exits. CANCELED: stops its runs and exits.

When the search is done (`run_cap`, the grid exhausted, `metric.target` reached) and its
runs have ended, it marks the sweep FINISHED and exits 0. Killed, it is re-attached by a
restarted agent like any job; preempted (SIGTERM from outside), its item is requeued and the
next scheduler resumes from the stored runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import string
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agent_lib.backends.sql import SqlBackend
from agent_lib.backends.sql_sweeps import (
    CANCELED,
    FINISHED,
    OPEN_RUN_STATES,
    RUN_FAILED,
    RUN_FINISHED,
    RUN_PRUNED,
    RUN_PRUNING,
    RUN_QUEUED,
    RUN_RUNNING,
    RUN_STOPPED,
    RUNNING,
    SweepRunRecord,
)
from agent_lib.errors import SpecError
from agent_lib.files import job_dir_for
from agent_lib.spec import LaunchSpec
from agent_lib.states import ItemState
from agent_lib.sweeps.config import SweepConfig, parse_sweep_config
from agent_lib.sweeps.metrics import RunMetrics
from agent_lib.sweeps.runs import run_spec
from agent_lib.sweeps.search import Search

log = logging.getLogger("agent_lib.sweeps.scheduler")

RUN_ID_ALPHABET = string.ascii_lowercase + string.digits
REQUEUED_AS = re.compile(r"requeued as item (\d+)")
PRUNED = "pruned by hyperband at step {step}"


def new_run_id() -> str:
    return "".join(secrets.choice(RUN_ID_ALPHABET) for _ in range(8))


class SchedulerError(Exception):
    """The sweep cannot go on (its scheduler item fails, saying why; `sweep resume` after
    a fix queues a new one)."""


class Scheduler:
    """One sweep's scheduler loop (see the module docstring)."""

    def __init__(self, db: SqlBackend, sweep_id: str, item_id: str, jobs_dir: Path) -> None:
        self.db = db
        self.sweep_id = sweep_id
        self.item_id = item_id
        self.jobs_dir = jobs_dir
        self._readers: dict[int, RunMetrics] = {}
        self._runs: dict[int, SweepRunRecord] = {}

    def run(self) -> int:
        sweep = self.db.claim_sweep_scheduler(self.sweep_id, self.item_id)
        if sweep is None or not sweep.config:
            log.error("no sweep %r in %s", self.sweep_id, self.db.display_url)
            return 1
        self.config = parse_sweep_config(sweep.config)
        self.settings = sweep.settings
        runs = self.db.sweep_runs(self.sweep_id)
        self.search = Search(self.config, self.sweep_id, int(self.settings.get("seed", 0)), runs)
        self._runs = {r.number: r for r in runs}
        log.info(
            "sweep %s: scheduler (item %s) started, %s search, %d run(s) so far",
            self.sweep_id,
            self.item_id,
            self.config.method,
            len(runs),
        )
        while True:
            sweep = self.db.get_sweep(self.sweep_id)
            if sweep is None:
                log.error("sweep %s is gone from the database", self.sweep_id)
                return 1
            if sweep.scheduler_item_id != self.item_id:
                log.info("sweep %s: item %s took it over", self.sweep_id, sweep.scheduler_item_id)
                return 0
            self._sync()
            open_runs = self._open()
            if sweep.state == CANCELED:
                self.db.stop_sweep_items(
                    [r.item_id for r in open_runs], f"sweep {self.sweep_id} (canceled)"
                )
                log.info("sweep %s was canceled: its runs were stopped", self.sweep_id)
                return 0
            if sweep.state == FINISHED and not open_runs:
                log.info("sweep %s is finished and its runs ended", self.sweep_id)
                return 0
            if sweep.state == RUNNING:
                why = self.search.exhausted()
                if why is None:
                    self._fill(len(open_runs))
                elif not open_runs:
                    self.db.finish_sweep(self.sweep_id, why)
                    log.info("sweep %s finished: %s; %s", self.sweep_id, why, self._best())
                    return 0
            time.sleep(self.config.poll_interval)

    def _open(self) -> list[SweepRunRecord]:
        return [r for r in self._runs.values() if r.state in OPEN_RUN_STATES]

    def _fill(self, open_count: int) -> None:
        config = self.config
        while open_count < config.num_workers and self.search.exhausted() is None:
            number, params, attrs = self.search.ask()
            run_id = new_run_id()
            run_config = config.run_config(params)
            name = f"{config.name or self.sweep_id}-{number}"
            spec = run_spec(self.settings["template"], self.sweep_id, name, run_id, run_config)
            try:
                LaunchSpec.parse(spec)
            except SpecError as exc:  # asking again would fail again: the scheduler fails
                self.search.forget(number)
                raise SchedulerError(f"run {number} cannot be pushed: {exc}") from None
            item_id = self.db.push_sweep_run(
                self.sweep_id,
                self.item_id,
                number,
                params,
                attrs,
                self.settings["queue"],
                spec,
                self.settings.get("priority"),
            )
            if item_id is None:  # paused, stopped or taken over meanwhile: nothing was written
                self.search.forget(number)
                return
            now = time.time()
            self._runs[number] = SweepRunRecord(
                self.sweep_id, number, item_id, run_id, params, attrs, RUN_QUEUED, None, {}, None,
                now, now, ItemState.PENDING.value,
            )  # fmt: skip
            log.info("sweep %s: run %d (item %s): %s", self.sweep_id, number, item_id, run_config)
            open_count += 1

    def _sync(self) -> None:
        """Follow every open run: its item's state, its metric, its end."""
        for stored in self.db.sweep_runs(self.sweep_id, open_only=True):
            known = self._runs.get(stored.number)
            if known is not None and known.state not in OPEN_RUN_STATES:
                continue
            self._runs[stored.number] = stored
            if stored.state in OPEN_RUN_STATES:
                self._follow(stored)

    def _follow(self, run: SweepRunRecord) -> None:
        item = run.item_state
        if item == ItemState.PREEMPTED.value and self._follow_resume(run):
            return
        if item == ItemState.CLAIMED.value and run.state == RUN_QUEUED:
            self._update(run, state=RUN_RUNNING)
        if item in (ItemState.CLAIMED.value, ItemState.FINISHED.value):
            self._read_metrics(run)
        if item not in (
            ItemState.FINISHED.value,
            ItemState.FAILED.value,
            ItemState.STOPPED.value,
            ItemState.PREEMPTED.value,
        ):
            return
        self._end(run, item)

    def _read_metrics(self, run: SweepRunRecord) -> None:
        metric = self.config.metric_name
        if metric is None:
            return
        reader = self._readers.get(run.number)
        if reader is None:
            folder = job_dir_for(self.jobs_dir, run.item_id, run.run_id)
            reader = self._readers[run.number] = RunMetrics(folder, run.run_id, metric)
        metrics = reader.read()
        steps = {**run.intermediate, **metrics.steps}
        if steps == run.intermediate and metrics.value == run.value:
            return
        self._update(run, intermediate=steps, value=metrics.value)
        # Every run reports its steps (the pruner compares runs at each rung); only one
        # that still runs can be stopped.
        step = self.search.report(run.number, steps)
        if step is not None and run.item_state == ItemState.CLAIMED.value:
            message = PRUNED.format(step=step)
            log.info("sweep %s: run %d %s", self.sweep_id, run.number, message)
            self.db.prune_sweep_run(self.sweep_id, run.number, run.item_id, step, message)
            run.state, run.message = RUN_PRUNING, message

    def _end(self, run: SweepRunRecord, item: str) -> None:
        message: str | None = None
        value = run.value
        if item == ItemState.FINISHED.value:
            state = RUN_FINISHED
            if self.config.metric_name is not None and value is None:
                state = RUN_FAILED
                message = f"the run finished without reporting {self.config.metric_name}"
        elif item == ItemState.STOPPED.value and run.state == RUN_PRUNING:
            state, message = RUN_PRUNED, run.message
            if message:
                self.db.set_stopped_message(run.item_id, message)
        elif item == ItemState.STOPPED.value:
            state, message = RUN_STOPPED, "its item was stopped"
        else:
            state, message = RUN_FAILED, f"its item ended {item}"
        self.search.tell(run.number, state, value)
        attrs = self.search.system_attrs(run.number)  # the pruner's rungs, for a rebuild
        self._update(run, state=state, message=message, system_attrs=attrs)
        self._readers.pop(run.number, None)
        shown = f"{self.config.metric_name}={value:g}" if value is not None else (message or "")
        log.info("sweep %s: run %d %s: %s", self.sweep_id, run.number, state, shown)

    def _follow_resume(self, run: SweepRunRecord) -> bool:
        """A preempted run was requeued as a new item to resume: follow that item."""
        found = self.db.get_item(run.item_id)
        match = REQUEUED_AS.search(found.failure_message or "") if found else None
        if match is None:
            return False
        self._readers.pop(run.number, None)
        self._update(run, item_id=match.group(1))
        return True

    def _update(self, run: SweepRunRecord, **values: object) -> None:
        self.db.update_sweep_run(self.sweep_id, run.number, values)
        for key, value in values.items():
            setattr(run, key, value)

    def _best(self) -> str:
        best = best_run(self.config, list(self._runs.values()))
        if best is None or best.value is None:
            return "no run reported its metric"
        return f"best run {best.number}: {self.config.metric_name}={best.value:g}"


def best_run(config: SweepConfig, runs: list[SweepRunRecord]) -> SweepRunRecord | None:
    best: SweepRunRecord | None = None
    for run in runs:
        if run.state != RUN_FINISHED or run.value is None:
            continue
        if best is None or best.value is None or config.better(run.value, best.value):
            best = run
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_lib.sweeps.scheduler")
    parser.add_argument("--sweep", required=True, help="the sweep's id")
    parser.add_argument("--jobs-dir", required=True, help="the agent's job folders")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s"
    )
    url = os.environ.get("DATABASE_URL")
    if not url:
        log.error("DATABASE_URL is not set: the scheduler needs the queue database")
        return 2
    item_id = os.environ.get("WANDB_LAUNCH_TRACE_ID") or f"manual-{os.getpid()}"
    db = SqlBackend(url, listen=False)
    try:
        return Scheduler(db, args.sweep, item_id, Path(args.jobs_dir)).run()
    except (SchedulerError, SpecError) as exc:
        log.error("sweep %s: %s", args.sweep, exc)
        return 1
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main())
