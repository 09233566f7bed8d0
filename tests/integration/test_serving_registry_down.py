"""Started without a reachable registry: alive, not ready, no prediction; ready once a model appears."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.servers import free_port
from tests.serving_support import record, serve, unique_model_name

pytestmark = pytest.mark.slow


def test_no_registry_means_live_but_not_ready(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with serve(nowhere, unique_model_name(), tmp_path, wait_path="/health") as svc, svc.client() as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False and ready.json()["registry_reachable"] is False
        assert "unreachable" in ready.json()["detail"]
        r = c.post("/predict", json=record())
        assert r.status_code == 503 and "no model" in r.json()["detail"]
        assert c.get("/model").status_code == 503


def test_registry_up_but_no_champion_yet(mlflow_server: str, tmp_path: Path) -> None:
    with serve(mlflow_server, unique_model_name(), tmp_path, wait_path="/health") as svc, svc.client() as c:
        ready = c.get("/ready").json()
        assert ready["ready"] is False and ready["registry_reachable"] is True
