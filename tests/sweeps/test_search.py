"""Sweeps run by real agents and real scheduler processes: grid, random, bayes, hyperband,
max_schedulers. Agents run until idle (exit_when_idle), so no test sleeps to synchronise."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_lib.backends import SqlBackend
from agent_lib.backends.sql_url import sqlalchemy_url
from agent_lib.states import ItemState
from tests.backend.pg import fresh_database
from tests.helpers import fast_config, run_agent
from tests.sweeps.helpers import cli, create_sweep, ledger, show, write_train

FAST = {"num_workers": 3, "poll_interval": 0.05}


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
        return
    with fresh_database() as url:
        yield sqlalchemy_url(url)


def test_a_grid_sweep_runs_exactly_the_grid_and_finds_the_best_point(
    any_db: str, tmp_path: Path
) -> None:
    config = {
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"x": {"values": [-1, 0, 1, 2]}, "y": {"values": [-0.5, 0.5]}},
        "scheduler": FAST,
    }
    sweep_id = create_sweep(any_db, tmp_path, config, write_train(tmp_path))
    backend = SqlBackend(any_db)
    try:
        run_agent(backend, fast_config(tmp_path, max_jobs=3, exit_when_idle=True))
        data = show(any_db, tmp_path, sweep_id)
        scheduler = backend.get_item(data["scheduler_item"])
        runs = backend.sweep_runs(sweep_id)
        items = [backend.get_item(r.item_id) for r in runs]
    finally:
        backend.close()

    grid = {(x, y) for x, y in itertools.product([-1, 0, 1, 2], [-0.5, 0.5])}
    started = [(cfg["x"], cfg["y"]) for _, cfg in ledger(tmp_path)]
    assert sorted(started) == sorted(grid)  # every point once, nothing else
    assert data["state"] == "FINISHED"
    assert scheduler is not None and scheduler.state is ItemState.FINISHED
    assert [r["state"] for r in data["runs"]] == ["finished"] * 8
    assert data["best"]["params"] == {"x": 1, "y": -0.5} and data["best"]["value"] == 0.0
    for info in items:  # a run is a queue item of the sweep, its parameters as run_config
        assert info is not None and info.state is ItemState.FINISHED
        assert info.run_spec["sweep_id"] == sweep_id
        cfg = info.run_spec["overrides"]["run_config"]
        assert info.run_spec["overrides"]["entry_point"][-2:] == [
            f"--x={cfg['x']}",
            f"--y={cfg['y']}",
        ]


def test_a_random_sweep_stops_at_run_cap(backend: SqlBackend, db_url: str, tmp_path: Path) -> None:
    config = {
        "method": "random",
        "metric": {"name": "loss"},
        "run_cap": 5,
        "parameters": {"x": {"min": -2.0, "max": 2.0}, "y": {"min": -1.0, "max": 1.0}},
        "scheduler": FAST,
    }
    sweep_id = create_sweep(db_url, tmp_path, config, write_train(tmp_path))
    run_agent(backend, fast_config(tmp_path, max_jobs=3, exit_when_idle=True))

    data = show(db_url, tmp_path, sweep_id)
    assert data["state"] == "FINISHED" and "run_cap 5 reached" in data["message"]
    assert len(data["runs"]) == 5 and len(ledger(tmp_path)) == 5
    assert len({(r["params"]["x"], r["params"]["y"]) for r in data["runs"]}) == 5
    assert all(-2 <= r["params"]["x"] <= 2 for r in data["runs"])
    code, listing = cli("sweep", "list", "--backend", db_url, "--data-dir", str(tmp_path))
    assert code == 0 and sweep_id in listing and "FINISHED" in listing


def test_a_bayes_sweep_moves_towards_the_optimum(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    """TPE on (x-1)^2 + (y+0.5)^2 over [-5, 5]^2, seeded: its later runs are closer to the
    optimum than its random start-up runs (a loose check)."""
    config = {
        "method": "bayes",
        "metric": {"name": "loss", "goal": "minimize"},
        "run_cap": 24,
        "parameters": {"x": {"min": -5.0, "max": 5.0}, "y": {"min": -5.0, "max": 5.0}},
        "scheduler": {"num_workers": 1, "poll_interval": 0.02, "n_startup_trials": 8},
    }
    sweep_id = create_sweep(db_url, tmp_path, config, write_train(tmp_path), "--seed", "7")
    run_agent(backend, fast_config(tmp_path, max_jobs=1, exit_when_idle=True))

    data = show(db_url, tmp_path, sweep_id)
    values = [r["value"] for r in data["runs"]]
    assert len(values) == 24 and None not in values
    startup, late = values[:8], values[-8:]
    assert sorted(late)[len(late) // 2] < sorted(startup)[len(startup) // 2]
    assert data["best"]["value"] < 1.0


def test_hyperband_stops_bad_runs_early(backend: SqlBackend, db_url: str, tmp_path: Path) -> None:
    """A good run, then bad ones (seed 12 orders the grid so); each reports 6 steps, 0.3 s
    apart. One Hyperband bracket (min_iter 1, max_iter 2): every bad run is stopped at its
    first rung, step 1, and its item ends STOPPED saying so."""
    config = {
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {
            "bias": {"values": [0.0, 5.0, 6.0, 7.0, 8.0]},
            "steps": {"value": 6},
            "delay": {"value": 0.3},
            "x": {"value": 1.0},
            "y": {"value": -0.5},
        },
        "early_terminate": {"type": "hyperband", "min_iter": 1, "max_iter": 2, "eta": 3},
        "scheduler": {"num_workers": 1, "poll_interval": 0.02},
    }
    sweep_id = create_sweep(db_url, tmp_path, config, write_train(tmp_path), "--seed", "12")
    run_agent(backend, fast_config(tmp_path, max_jobs=2, exit_when_idle=True))

    data = show(db_url, tmp_path, sweep_id)
    assert data["runs"][0]["params"]["bias"] == 0.0  # the seed's order
    good, *bad = data["runs"]
    assert good["state"] == "finished" and good["steps"] == 6
    assert data["best"]["number"] == good["number"]
    for run in bad:
        assert run["state"] == "pruned", run
        assert run["message"] == "pruned by hyperband at step 1"
        assert run["steps"] < 6  # stopped before its end
        info = backend.get_item(run["item"])
        assert info is not None and info.state is ItemState.STOPPED
        assert info.failure_message == "pruned by hyperband at step 1"
    code, out = cli("show", bad[0]["item"], "--backend", db_url, "--data-dir", str(tmp_path))
    assert code == 0 and "pruned by hyperband at step 1" in out


def test_max_schedulers_is_respected_with_two_sweeps(
    backend: SqlBackend, db_url: str, tmp_path: Path
) -> None:
    config = {
        "method": "grid",
        "metric": {"name": "loss"},
        "parameters": {"x": {"values": [0, 1, 2]}},
        "scheduler": FAST,
    }
    first = create_sweep(db_url, tmp_path, config, write_train(tmp_path))
    second = create_sweep(db_url, tmp_path, config, write_train(tmp_path))
    run_agent(backend, fast_config(tmp_path, max_jobs=4, max_schedulers=1, exit_when_idle=True))

    spans = []
    for sweep_id in (first, second):
        data = show(db_url, tmp_path, sweep_id)
        assert data["state"] == "FINISHED" and len(data["runs"]) == 3
        info = backend.get_item(data["scheduler_item"])
        assert info is not None and info.state is ItemState.FINISHED
        assert info.claimed_at is not None and info.finished_at is not None
        spans.append((info.claimed_at, info.finished_at))
    (_, a_end), (b_start, _) = sorted(spans)
    assert a_end <= b_start, "two schedulers ran at once with max_schedulers=1"
    assert len(ledger(tmp_path)) == 6
