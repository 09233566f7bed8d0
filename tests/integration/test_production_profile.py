"""The PostgreSQL-backed configuration of the production profile, against the real PostgreSQL at
127.0.0.1:5432: MLflow's backend store and Prefect's database (the prediction log on PostgreSQL is
covered by the serving tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from mlflow import MlflowClient

from core.servers import start_mlflow, start_prefect
from tests.postgres import fresh_database, sqlalchemy_url


@pytest.fixture(scope="module")
def pg_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("pg-mlflow")
    with fresh_database("mlops_mlflow") as db:
        server = start_mlflow(sqlalchemy_url(db), root / "artifacts", root / "server.log")
        try:
            yield server.url
        finally:
            server.stop()


def test_mlflow_backend_store_on_postgres(pg_mlflow: str) -> None:
    client = MlflowClient(tracking_uri=pg_mlflow)
    exp = client.create_experiment("pg-profile")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "pr_auc", 0.5)
    client.set_terminated(run.info.run_id)
    client.create_registered_model("pg-model")
    mv = client.create_model_version("pg-model", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("pg-model", "champion", mv.version)
    assert client.get_model_version_by_alias("pg-model", "champion").run_id == run.info.run_id
    assert client.get_run(run.info.run_id).data.metrics["pr_auc"] == 0.5


def test_prefect_database_on_postgres(tmp_path: Path) -> None:
    with fresh_database("mlops_prefect") as db:
        home = tmp_path / "prefect-home"
        server = start_prefect(home, tmp_path / "prefect.log", database_url=sqlalchemy_url(db, "asyncpg"))
        try:
            flow_file = tmp_path / "hello.py"
            flow_file.write_text(
                "from prefect import flow\n\n@flow\ndef hello(x: int) -> int:\n    return x + 1\n\nprint(hello(41))\n"
            )
            env = {
                **os.environ,
                "PREFECT_API_URL": f"{server.url}/api",
                "PREFECT_HOME": str(home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
            out = subprocess.run(
                [sys.executable, str(flow_file)],
                env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr[-2000:]
            assert out.stdout.strip().endswith("42")
            with psycopg.connect(sqlalchemy_url(db).replace("postgresql+psycopg", "postgresql")) as conn:
                states = conn.execute("SELECT state_type FROM flow_run").fetchall()
            assert [s[0] for s in states] == ["COMPLETED"], "the flow run is recorded in the PostgreSQL database"
        finally:
            server.stop()
