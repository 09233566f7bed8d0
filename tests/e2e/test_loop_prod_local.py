"""The whole loop on the production topology: `make prod-local`, every part a real server.

PostgreSQL (warehouse, MLflow backend, Prefect database, prediction log), an S3 server for MLflow's
artifacts, the MLflow and Prefect servers, a process worker running prefect.yaml's deployments, the API
with 2 workers, Prometheus scraping it. On it, as an operator would: the warehouse is filled, collect ->
preprocess -> train run with `prefect deployment run`, both API workers serve the champion, drifted
traffic is scored and labelled, the monitor flow's event starts retraining on the worker, the gate decides
and both workers serve what it decided. Then: every model is in the bucket, every prediction a row in
PostgreSQL, and every panel of the Grafana dashboard (through Prometheus' HTTP API) and of the Evidently
dashboard (through `evidently ui`'s) shows a value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import sqlalchemy as sa

from core.databases import engine_for
from core.servers import prefect_env
from core.settings import Settings, get_settings
from deploy.prodlocal import ProdLocal
from tests.dashboards import empty_lines, grafana_panels, workspace_panels
from tests.e2e.stacks import deployment_run, environment, loop_env, outside_settings, prod_local
from tests.serving_support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(autouse=True)
def _prefect() -> None:
    """prod-local brings its own Prefect server: the run's shared one is not needed here."""


@dataclass
class Live:
    stack: ProdLocal
    client_env: dict[str, str]  # prod-local's printed exports plus the loop's settings
    turn: Any = None  # the drift turn's result (demo.loop.LoopTurn)

    @property
    def api(self) -> str:
        return self.stack.url("api")

    @property
    def prefect_api(self) -> str:
        return self.stack.url("prefect") + "/api"

    def settings(self) -> Settings:
        with environment(self.client_env):
            return get_settings()

    def run(self, name: str, *params: str) -> str:
        return deployment_run({**outside_settings(), **self.client_env}, name, *params)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    state = tmp_path_factory.mktemp("prodlocal-loop")
    env = {**loop_env(), "MLOPS_SERVING__LOG_FLUSH_S": "0.2"}
    with prod_local(state, env, deployments=True) as (stack, _):
        prefect = prefect_env(stack.url("prefect") + "/api", Path(stack.state) / "prefect-home")
        yield Live(stack, {**env, **stack.env, **prefect})


def served_versions(api: str, connections: int = 12) -> set[str]:
    """The model version each of `connections` fresh connections is answered by (either worker may take
    each one)."""
    out = set()
    for _ in range(connections):
        body = httpx.get(f"{api}/ready", timeout=5)
        out.add(str(body.json().get("model_version")) if body.status_code == 200 else f"not ready: {body.text}")
    return out


def test_collect_preprocess_train_with_the_deployments(live: Live) -> None:
    from demo.simulator import seed_warehouse

    with environment(live.client_env):
        written = seed_warehouse(get_settings())  # the operational warehouse, here the demo's simulated days
    assert written is not None and written.rows_written > 0
    live.run("collect/collect")
    live.run("preprocess/preprocess")
    live.run("train/train")
    with environment(live.client_env):
        from demo.loop import _champion_version

        assert _champion_version(get_settings()) == "1"


def test_both_api_workers_serve_the_champion(live: Live) -> None:
    assert wait_for(lambda: served_versions(live.api) == {"1"}, timeout=90)


def test_drifted_traffic_retrains_and_both_workers_serve_the_gates_choice(live: Live) -> None:
    from demo.loop import _champion_version, turn

    with environment(live.client_env):
        settings = get_settings()
        t = turn(settings, live.api, live.prefect_api, scenario="concept_drift", days=21, seed=202)
        champion = _champion_version(settings)
    live.turn = t
    assert t.traffic.failures == 0 and t.traffic.rows > 0
    assert t.monitor["retrain"] and t.monitor["triggered"], t.monitor
    assert t.monitor["trigger"] == "event", "the retraining was started by prefect.yaml's trigger on the event"
    assert t.retrain_state == "COMPLETED"
    assert champion is not None and t.version_after == champion
    assert wait_for(lambda: served_versions(live.api) == {champion}, timeout=60)


def test_models_are_in_the_bucket_and_rows_in_postgres(live: Live) -> None:
    import mlflow

    settings = live.settings()
    env = live.stack.env
    client = mlflow.MlflowClient(tracking_uri=live.stack.url("mlflow"), registry_uri=live.stack.url("mlflow"))
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    assert len(versions) >= 2, "the first model and at least one retrained candidate"
    s3 = boto3.client(
        "s3",
        endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=live.stack.bucket)
            for o in page.get("Contents", [])]  # fmt: skip
    models = [k for k in keys if k.endswith("/MLmodel")]
    for version in versions:
        model_id = version.model_id or ""
        assert any(model_id in k for k in models), f"v{version.version} ({model_id}) not in the bucket"
    assert not list((Path(live.stack.state) / "app").rglob("MLmodel")), "no artifact lands on the local disk"

    engine = engine_for(live.stack.database_url("predictions"))
    try:
        with engine.connect() as conn:
            logged = int(conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar_one())
    finally:
        engine.dispose()
    assert live.turn is not None and logged >= live.turn.traffic.rows


def test_every_grafana_panel_shows_a_value(live: Live) -> None:
    """Each panel's queries, asked of the Prometheus that scraped the API, return at least one series."""
    prometheus = live.stack.url("prometheus")

    def answered(expr: str) -> bool:
        reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert reply["status"] == "success", (expr, reply)
        return bool(reply["data"]["result"])

    panels = grafana_panels()
    assert panels

    def empty() -> list[str]:
        return [f"{file}: {title}" for file, title, exprs in panels if not any(answered(e) for e in exprs)]

    try:
        wait_for(lambda: not empty(), timeout=30, interval=1)
    except AssertionError:
        pytest.fail(f"Grafana panels that would show 'No data': {empty()}")


def test_every_evidently_panel_shows_a_value(live: Live, tmp_path: Path) -> None:
    from monitoring.reports import workspace_dir

    dashboards = workspace_panels(workspace_dir(live.settings()), tmp_path / "evidently.log")
    assert len(dashboards) == 1, list(dashboards)
    [panels] = dashboards.values()
    assert live.turn is not None
    drifted = live.turn.monitor["drifted_columns"]
    [headline] = [p for p in panels if p["kind"] == "text"]
    assert f"{len(drifted)} of " in headline["title"], headline
    assert not empty_lines(panels), f"Evidently panels with a line and no point: {empty_lines(panels)}"
