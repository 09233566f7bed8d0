"""Fixtures shared by every kind of test.

Servers are real and started once per session (MLflow takes several seconds to start); every test
that changes settings does it through the environment, as a user would, in its own state directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every default location at a fresh state directory for one test."""

    state = tmp_path / "state"
    monkeypatch.setenv("MLOPS_STATE_DIR", str(state))
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "test")
    yield state


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, local artifacts) on 127.0.0.1 for the session."""
    from core.servers import start_mlflow

    root = tmp_path_factory.mktemp("mlflow")
    server = start_mlflow(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def mlflow_env(mlflow_server: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings and the mlflow client both pointed at the session's tracking server."""
    import mlflow

    monkeypatch.setenv("MLOPS_MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    return mlflow_server
