"""`make prod-local` end to end: the production topology as real servers, on a non-fraud dataset.

One `python -m deploy.prodlocal` (what `make prod-local` runs) on breast_cancer with databases of its
own; a model registered through its MLflow server, served by the 2-worker API. Proves: the model's
artifacts are in the S3 bucket, the predictions are rows in PostgreSQL, Prometheus scraped the API's
request counter, and every metric the Grafana dashboard queries is a series the API exports.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
import sqlalchemy as sa

from core.databases import engine_for
from core.settings import get_settings
from deploy.prodlocal import ProdLocal
from tests.dashboards import dashboard_queries, declared_series, exported_series, metric_names
from tests.e2e.stacks import environment, prod_local
from tests.serving_support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CONFIG = "configs/settings.yaml,configs/examples/breast_cancer/settings.yaml"
N_REQUESTS = 30


@pytest.fixture(autouse=True)
def _prefect() -> None:
    """prod-local brings its own Prefect server: the run's shared one is not needed here."""


@pytest.fixture(scope="module")
def prodlocal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProdLocal]:
    env = {"MLOPS_CONFIG": CONFIG, "MLOPS_SERVING__RELOAD_INTERVAL_S": "1", "MLOPS_SERVING__LOG_FLUSH_S": "0.2"}
    with prod_local(tmp_path_factory.mktemp("prodlocal"), env, deployments=False) as (stack, printed):
        assert "Prometheus" in printed and stack.url("api") in printed, "it prints where things are"
        yield stack


@pytest.fixture(scope="module")
def served(prodlocal: ProdLocal) -> str:
    """The example model registered through prod-local's MLflow, the champion of the 2-worker API."""
    import mlflow

    from serving.example_model import register_example_model

    with environment(prodlocal.env):
        settings = get_settings()
        mlflow.set_tracking_uri(prodlocal.url("mlflow"))
        mlflow.set_registry_uri(prodlocal.url("mlflow"))
        register_example_model(settings.contract, settings.model_name, n_rows=500, experiment_name="prod-local")
        api = prodlocal.url("api")
        # /ready answers for the worker that takes the connection: both workers have loaded the model when
        # 12 fresh connections in a row are ready.
        wait_for(lambda: all(httpx.get(f"{api}/ready", timeout=5).status_code == 200 for _ in range(12)), timeout=90)
    return settings.model_name


def test_artifacts_go_to_the_bucket(prodlocal: ProdLocal, served: str) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=prodlocal.env["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id=prodlocal.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=prodlocal.env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=prodlocal.bucket).get("Contents", [])]
    assert any(k.endswith("/MLmodel") for k in keys), f"no model in bucket {prodlocal.bucket}: {keys[:20]}"
    assert not list((Path(prodlocal.state) / "app").rglob("MLmodel")), "no artifact lands on the local disk"


def test_predictions_land_in_postgres_and_prometheus_scrapes_them(prodlocal: ProdLocal, served: str) -> None:
    with environment(prodlocal.env):
        contract = get_settings().contract
    record = {name: contract.column(name).example for name in contract.input_columns}
    api = prodlocal.url("api")
    with httpx.Client(base_url=api, timeout=30) as client:
        for _ in range(N_REQUESTS):
            assert client.post("/predict", json=record).status_code == 200

    engine = engine_for(prodlocal.database_url("predictions"))

    def logged() -> int:
        if not sa.inspect(engine).has_table("predictions"):
            return 0  # the writers create it at their first flush
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar_one())

    assert wait_for(lambda: logged() >= N_REQUESTS, timeout=30)
    engine.dispose()

    prometheus = prodlocal.url("prometheus")

    def scraped() -> list[dict[str, object]]:
        reply = httpx.get(
            f"{prometheus}/api/v1/query",
            params={"query": 'sum(serving_requests_total{endpoint="/predict"})'},
            timeout=5,
        ).json()
        result: list[dict[str, object]] = reply["data"]["result"]
        return result if result and float(result[0]["value"][1]) >= N_REQUESTS else []  # type: ignore[index]

    assert wait_for(scraped, timeout=30, interval=0.5)

    # The dashboard against the live exposition: each queried series is exported (the prediction log's
    # counter once the writer has flushed), or, only for a counter of events this traffic cannot cause,
    # declared by serving/metrics.py.
    declared = declared_series()
    queried = {name for exprs in dashboard_queries().values() for e in exprs for name in metric_names(e)}
    allowed = set() if contract.categorical_features else {"serving_unknown_categories_total"}

    def missing() -> set[str]:
        return queried - exported_series(httpx.get(f"{api}/metrics", timeout=10).text) - allowed

    try:
        wait_for(lambda: not missing(), timeout=20, interval=0.5)
    except AssertionError:
        pytest.fail(f"the dashboard queries {sorted(missing())}, absent from the API's /metrics")
    exported = exported_series(httpx.get(f"{api}/metrics", timeout=10).text)
    unexpected = {name for name in exported if name.startswith("serving_")} - declared.keys()
    assert not unexpected, f"/metrics exports series serving/metrics.py does not declare: {unexpected}"
    assert allowed <= declared.keys()
