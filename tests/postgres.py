"""Throwaway databases in the PostgreSQL at 127.0.0.1:5432 (trust auth on the project's machines)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

PG_HOST = os.environ.get("MLOPS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MLOPS_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MLOPS_TEST_PG_USER", "postgres")


def _admin() -> psycopg.Connection:
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)


def postgres_available() -> bool:
    try:
        with _admin():
            return True
    except psycopg.OperationalError:
        return False


@contextlib.contextmanager
def fresh_database(prefix: str = "mlops_test") -> Iterator[str]:
    """Create a uniquely named database, yield its name, drop it (and its connections) afterwards."""
    if not postgres_available():
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}; start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
        )
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlalchemy_url(db: str, driver: str = "psycopg") -> str:
    return f"postgresql+{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"
