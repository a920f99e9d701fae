"""The search, by Optuna: grid (GridSampler), random (RandomSampler), bayes (TPESampler),
early termination by its HyperbandPruner, through Optuna's ask-and-tell interface.

The study lives in memory and is rebuilt from the sweep's stored runs at every scheduler
start (each run is stored with its trial's parameters and Optuna's system attributes, such
as the grid point it took), so a restarted scheduler goes on where the last one stopped.
A random or TPE sampler's seed is the sweep's seed plus the runs already asked, so a rebuilt
one never replays the sequence it already gave; a grid keeps the sweep's seed (it orders
the grid's points).
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from agent_lib.backends.sql_sweeps import (
    RUN_FINISHED,
    RUN_PRUNED,
    RUN_PRUNING,
    RUN_QUEUED,
    RUN_RUNNING,
    SweepRunRecord,
)
from agent_lib.sweeps.config import SweepConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)


class Search:
    """One sweep's Optuna study: ask for parameters, report steps, tell results."""

    def __init__(
        self, config: SweepConfig, sweep_id: str, seed: int, runs: list[SweepRunRecord]
    ) -> None:
        self.config = config
        self.distributions = {p.name: p.optuna_distribution() for p in config.searched}
        self.study = optuna.create_study(
            # Hyperband picks a trial's bracket from the study name and the trial number:
            # one name for every sweep keeps that the same across rebuilds and runs.
            study_name="launch-agent-sweep",
            direction="maximize" if config.goal == "maximize" else "minimize",
            sampler=self._sampler(seed, len(runs)),
            pruner=self._pruner(),
        )
        self._trials: dict[int, Trial] = {}
        self._reported: dict[int, set[int]] = {}
        for run in sorted(runs, key=lambda r: r.number):
            self._replay(run)

    def _sampler(self, seed: int, asked: int) -> optuna.samplers.BaseSampler:
        config = self.config
        if config.method == "grid":
            # The seed orders the grid's points (grid_id -> point): it must stay the same.
            return optuna.samplers.GridSampler(config.grid_space(), seed=seed)
        seed += asked
        if config.method == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        startup = config.n_startup_trials
        if startup is None:
            startup = 10
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)

    def _pruner(self) -> optuna.pruners.BasePruner:
        band = self.config.hyperband
        if band is None:
            return optuna.pruners.NopPruner()
        return optuna.pruners.HyperbandPruner(
            min_resource=band.min_iter,
            max_resource=band.max_iter if band.max_iter is not None else "auto",
            reduction_factor=band.eta,
        )

    def _replay(self, run: SweepRunRecord) -> None:
        """Put a stored run back into the study, as the trial it was."""
        state = TrialState.FAIL
        value: float | None = None
        if run.state in (RUN_QUEUED, RUN_RUNNING):
            state = TrialState.RUNNING
        elif run.state == RUN_FINISHED and run.value is not None:
            state, value = TrialState.COMPLETE, run.value
        elif run.state in (RUN_PRUNED, RUN_PRUNING):
            state = TrialState.PRUNED
        params = {k: v for k, v in run.params.items() if k in self.distributions}
        frozen = optuna.trial.create_trial(
            state=state,
            value=value,
            params=params,
            distributions={k: self.distributions[k] for k in params},
            system_attrs=run.system_attrs,
            intermediate_values=dict(run.intermediate),
        )
        self.study.add_trial(frozen)
        if state is TrialState.RUNNING:
            added = self.study.get_trials(deepcopy=False)[-1]
            self._trials[run.number] = Trial(self.study, added._trial_id)
            self._reported[run.number] = set(run.intermediate)

    @property
    def count(self) -> int:
        return len(self.study.get_trials(deepcopy=False))

    def exhausted(self) -> str | None:
        """Why no more runs should be asked for (None: go on)."""
        count = self.count
        if self.config.run_cap is not None and count >= self.config.run_cap:
            return f"run_cap {self.config.run_cap} reached"
        if self.config.method == "grid" and count >= self.config.grid_size:
            return f"the grid's {self.config.grid_size} points were all asked for"
        target = self.config.target
        if target is not None:
            for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                value = trial.value
                if value is not None and (
                    value <= target if self.config.goal == "minimize" else value >= target
                ):
                    return f"run {trial.number} reached the target {target:g}"
        return None

    def ask(self) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """The next trial: its number, its parameters (Optuna's values) and system attrs."""
        trial = self.study.ask(self.distributions)
        self._trials[trial.number] = trial
        self._reported[trial.number] = set()
        attrs = dict(self.study.get_trials(deepcopy=False)[trial.number].system_attrs)
        return trial.number, dict(trial.params), _jsonable(attrs)

    def forget(self, number: int) -> None:
        """A trial asked for but never stored (its push did not happen): fail it."""
        self._trials.pop(number, None)
        self.study.tell(number, state=TrialState.FAIL)

    def report(self, number: int, steps: dict[int, float]) -> int | None:
        """Report new steps; the step at which the pruner says stop, or None."""
        trial = self._trials.get(number)
        if trial is None:
            return None
        seen = self._reported.setdefault(number, set())
        new = sorted(s for s in steps if s not in seen)
        if not new:
            return None
        for step in new:
            trial.report(steps[step], step)
            seen.add(step)
        if self.config.hyperband is not None and trial.should_prune():
            return new[-1]
        return None

    def system_attrs(self, number: int) -> dict[str, Any]:
        return _jsonable(dict(self.study.get_trials(deepcopy=False)[number].system_attrs))

    def tell(self, number: int, state: str, value: float | None) -> None:
        if self._trials.pop(number, None) is None:
            return
        try:
            if state == RUN_FINISHED and value is not None:
                self.study.tell(number, value)
            elif state in (RUN_PRUNED, RUN_PRUNING):
                self.study.tell(number, state=TrialState.PRUNED)
            else:
                self.study.tell(number, state=TrialState.FAIL)
        except RuntimeError as exc:
            # GridSampler calls `study.stop()` once the grid is done, which only works
            # inside `optimize`; the trial's result is stored before that (Optuna's
            # `_tell` stores it in a `finally`). We decide when the grid is done ourselves.
            if "Study.stop" not in str(exc):
                raise


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    """Optuna's system attrs as JSON can hold them (tuples as lists)."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, dict):
            out[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
        else:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out
