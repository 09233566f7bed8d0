"""Fixtures for integration tests that need real services beyond tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import fresh_database, sqlalchemy_url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway database in the PostgreSQL at 127.0.0.1:5432, dropped after the test."""
    with fresh_database() as db:
        yield sqlalchemy_url(db)


@pytest.fixture(autouse=True)
def _prefect(prefect_server: str) -> str:
    """Flows run against the run's one Prefect server (tests/conftest.py)."""
    return prefect_server
