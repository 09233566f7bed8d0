"""Fixtures for integration tests that need real services beyond tests/conftest.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

PG_HOST = "127.0.0.1:5432"
PG_USERS = ("root", "postgres")


def _admin_engine() -> sa.Engine | None:
    for user in PG_USERS:
        engine = sa.create_engine(f"postgresql+psycopg://{user}@{PG_HOST}/postgres", isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return engine
        except sa.exc.OperationalError:
            engine.dispose()
    return None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway database in the PostgreSQL at 127.0.0.1:5432, dropped after the test."""
    admin = _admin_engine()
    if admin is None:
        pytest.skip(
            f"no PostgreSQL at {PG_HOST} (start it: pg_ctlcluster --skip-systemctl-redirect "
            "$(ls /etc/postgresql) main start)"
        )
    name = f"mlops_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    user = admin.url.username
    try:
        yield f"postgresql+psycopg://{user}@{PG_HOST}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
