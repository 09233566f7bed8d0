"""Database URLs and engines: the one place a SQLAlchemy URL is normalised and an engine is made.

Every database the project talks to (the warehouse, the prediction log, the Optuna study storage,
the simulator's warehouse) goes through here, so a URL written the way a person writes it works the
same everywhere: ``postgresql://user@host/db`` (or ``postgres://``) means psycopg 3, the driver the
lock file installs, not SQLAlchemy's default psycopg2; a ``sqlite:///path`` gets its folder created.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

_PSYCOPG3 = "postgresql+psycopg://"


def normalise_url(url: str) -> str:
    """The URL with the installed PostgreSQL driver spelled out; any other URL unchanged."""
    if url.startswith(("postgresql://", "postgres://")):
        return _PSYCOPG3 + url.split("://", 1)[1]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def sqlite_time(value: datetime) -> str:
    """A naive UTC time as SQLite holds it: the text SQLAlchemy's DateTime writes and binds
    ("2026-01-15 09:00:00.000000"). SQLite compares times as text, so every writer and every bound uses it."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///path`` URL (None for an in-memory database or another dialect)."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///"))


def engine_for(url: str, **kwargs: Any) -> sa.Engine:
    """An engine for any SQLAlchemy URL, with connection settings that fail fast when a server is down.

    SQLite waits up to 5 s on a locked database (two processes writing one file); PostgreSQL gives up a
    connection attempt after 3 s and checks pooled connections before use (a restarted server).
    """
    url = normalise_url(url)
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if is_sqlite(url):
        return sa.create_engine(url, connect_args={"timeout": 5}, **kwargs)
    if url.startswith(_PSYCOPG3):
        return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 3}, **kwargs)
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)


def libpq_url(url: str | sa.URL) -> str:
    """A PostgreSQL URL as libpq reads it (the ADBC driver's connection string): no SQLAlchemy driver name,
    and the 3 s connect timeout engine_for gives psycopg unless the URL sets its own."""
    parsed = sa.make_url(normalise_url(url) if isinstance(url, str) else url).set(drivername="postgresql")
    if "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": "3"})
    return parsed.render_as_string(hide_password=False)


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and tags."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url.rsplit("@", maxsplit=1)[-1]


def create_tables(engine: sa.Engine, create: Callable[[sa.Connection], object], names: set[str]) -> None:
    """Run `create` (a ``CREATE TABLE`` of tables `names` if missing) in its own transaction, safe when
    several writers race to do it: the loser's CREATE fails (PostgreSQL: "relation already exists", or a
    unique violation in pg_type; SQLite: "table ... already exists"), which is fine once all are there."""
    try:
        with engine.begin() as conn:
            create(conn)
    except sa.exc.DBAPIError:
        if not names <= set(sa.inspect(engine).get_table_names()):
            raise
