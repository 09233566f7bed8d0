"""The prediction store goes down and comes back: every prediction made meanwhile reaches it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from core.predictions import read_predictions
from tests.serving_support import record, register, serve, unique_model_name, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def _admin(sql: str) -> None:
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture
def database() -> Iterator[str]:
    name = f"serving_store_{uuid.uuid4().hex[:10]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is needed for this test: {exc}")
    try:
        yield name
    finally:
        _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _take_down(db: str) -> None:
    """Refuse new connections and cut the open ones: to the service, the store is gone."""
    _admin(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
    _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")


def _bring_back(db: str) -> None:
    _admin(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')


def test_store_down_and_back_loses_nothing(mlflow_server: str, tmp_path: Path, database: str) -> None:
    name = unique_model_name("store")
    register(mlflow_server, name)
    url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    env = {"MLOPS_PREDICTION_LOG_URL": url, "MLOPS_SERVING__LOG_RETRY_S": "0.5"}
    with serve(mlflow_server, name, tmp_path, env) as svc, httpx.Client(base_url=svc.url, timeout=30) as c:
        before = [c.post("/predict", json=record()).json()["request_id"] for _ in range(20)]
        wait_for(lambda: len(read_predictions(url)) == 20)

        _take_down(database)
        during: list[str] = []
        for i in range(200):
            r = c.post("/predict", json=record(transaction_id=f"down-{i}") if i % 2 else [record(), record()])
            assert r.status_code == 200, r.text  # the store being down never fails a prediction
            during += [p["request_id"] for p in r.json()["predictions"]]
        spool = tmp_path / "serving" / "spool"
        wait_for(lambda: any(p.stat().st_size for p in spool.glob("spool-*.jsonl")))
        assert 'serving_prediction_log_rows_total{outcome="spooled"}' in c.get("/metrics").text

        _bring_back(database)
        after = [c.post("/predict", json=record()).json()["request_id"] for _ in range(20)]
        expected = set(before + during + after)
        wait_for(lambda: expected <= set(read_predictions(url)["request_id"]), timeout=30)
        stored = read_predictions(url)
        assert stored["request_id"].is_unique  # a replay never writes a row twice
        assert len(stored) == len(expected) == 20 + 300 + 20
        assert not [p for p in spool.glob("*.jsonl") if p.stat().st_size]  # spool drained
