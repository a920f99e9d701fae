"""Database URLs for the SQL backend: the usual spellings in, SQLAlchemy's out.

`postgres://` and `postgresql://` (what Heroku, libpq and most tools write) mean the
psycopg 3 driver here; an explicit `postgresql+DRIVER://` is kept. A PostgreSQL URL with
parts left out (even just `postgresql://`) takes them from the PG* environment variables
(PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, ...), as libpq does.
"""

from __future__ import annotations

import re

SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


def is_sql_url(url: str) -> bool:
    return url.startswith(SQL_SCHEMES)


def sqlalchemy_url(url: str) -> str:
    """`postgres[ql]://...` -> `postgresql+psycopg://...`; anything else unchanged."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    if url.startswith("postgres+"):
        return "postgresql+" + url[len("postgres+") :]
    return url


def display_url(url: str) -> str:
    """The URL with any password hidden, for messages; never raises, even on a bad URL."""
    from sqlalchemy.engine import make_url  # sqlalchemy imports are not free: load on use

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL SQLAlchemy cannot parse: hide what looks like user:password@
        return re.sub(r"(//[^/@:]*):[^/]*@", r"\1:***@", url)
