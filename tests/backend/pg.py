"""A throw-away PostgreSQL database per test, on the server `scripts/services` provides."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.services import missing_service

URL_ENV = "LAUNCH_AGENT_TEST_POSTGRES_URL"


def admin_url() -> str:
    """The server's admin URL, or skip/fail (under CI) when there is no server."""
    url = os.environ.get(URL_ENV)
    if not url:
        missing_service(f"PostgreSQL: {URL_ENV} is not set")
        raise AssertionError("unreachable")
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5):
            pass
    except Exception as exc:
        missing_service(f"PostgreSQL at {URL_ENV} is not reachable: {exc}")
    return url


@contextmanager
def fresh_database(prefix: str = "la_test") -> Iterator[str]:
    """Create a database, yield its URL, drop it (even if sessions are still open)."""
    import psycopg

    admin = admin_url()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
