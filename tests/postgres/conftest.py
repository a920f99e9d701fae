"""Each test gets its own PostgreSQL database, dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backend.pg import fresh_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database("la_agents") as url:
        yield url
