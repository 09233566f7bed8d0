"""Fixtures for the e2e tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _prefect(prefect_server: str) -> str:
    """Flows run against the run's one Prefect server (tests/conftest.py)."""
    return prefect_server
