"""Chaos: two agents SIGKILLed and restarted at random while 100 short jobs run.

Every item must end with the outcome its job really had, every job must start exactly
once, and no job or supervisor process may be left behind. On SQLite and PostgreSQL.
The larger runs behind the numbers in the README are `bench/bench_chaos.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_lib.backends import SqlBackend, open_backend
from tests.backend.pg import fresh_database
from tests.chaos import run_chaos

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture(params=["sqlite", "postgresql"])
def chaos_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
        return
    with fresh_database("la_chaos") as url:
        yield url


def test_no_item_is_lost_or_run_twice_when_agents_are_killed(
    chaos_url: str, tmp_path: Path
) -> None:
    backend: SqlBackend = open_backend(chaos_url)  # type: ignore[assignment]
    try:
        report = run_chaos(backend, chaos_url, tmp_path, items=100, max_kills=10, seed=9)
    finally:
        backend.close()
    print(report.summary())
    assert report.kills >= 3, report.summary()
    assert report.clean, (
        report.summary(),
        report.wrong[:5],
        report.started_twice[:5],
        report.never_ended[:5],
        report.orphans[:5],
    )
