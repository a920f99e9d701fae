"""The backend contract suite runs every test against SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_lib.backends import SqlBackend
from agent_lib.backends.sql_url import sqlalchemy_url
from tests.backend.pg import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
        return
    with fresh_database() as url:
        yield url


@pytest.fixture
def open_db(db_url: str) -> Iterator[object]:
    """A factory for backends on this test's database; all are closed at the end."""
    opened: list[SqlBackend] = []

    def factory(**kwargs: object) -> SqlBackend:
        db = SqlBackend(sqlalchemy_url(db_url), **kwargs)  # type: ignore[arg-type]
        opened.append(db)
        return db

    yield factory
    for db in opened:
        db.close()


@pytest.fixture
def backend(open_db: object) -> SqlBackend:
    return open_db()  # type: ignore[operator,no-any-return]
