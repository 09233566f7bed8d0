"""Reason codes through real uvicorn (`python -m serving`) with a real MLflow server: the registry is
read over its REST API, so GET /explain loads an earlier version the way a deployed service does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from core.settings import get_settings
from tests.serving_support import ADMIN_KEY, Service, record, register, serve, unique_model_name, wait_for

pytestmark = pytest.mark.slow
REPORT = "<!DOCTYPE html><html><body><h1>model report é</h1></body></html>"


@pytest.fixture(scope="module")
def versions(mlflow_server: str) -> dict[str, str]:
    import mlflow

    from core.registry.report import attach_report

    name = unique_model_name("serving-explain")
    linear = register(mlflow_server, name, family="logistic")
    trees = register(mlflow_server, name, family="hist_gradient_boosting", alias=None)
    # A report on the first version, as the gate attaches one (its content is tests/unit/test_report.py's).
    run_id = mlflow.MlflowClient().get_model_version(name, linear).run_id
    attach_report(REPORT, model_name=name, version=linear, run_id=run_id)
    return {"name": name, "linear": linear, "trees": trees}


@pytest.fixture(scope="module")
def service(
    mlflow_server: str, versions: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with serve(mlflow_server, versions["name"], tmp_path_factory.mktemp("serving-explain")) as svc:
        yield svc


def test_model_links_the_versions_report_served_from_the_registry(service: Service) -> None:
    model = httpx.get(f"{service.url}/model", timeout=10).json()
    assert model["report_url"] == "/model/report"
    page = httpx.get(f"{service.url}{model['report_url']}", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == REPORT


def test_reason_codes_then_explain_by_the_version_that_predicted(
    service: Service, versions: dict[str, str], mlflow_server: str
) -> None:
    import mlflow

    contract = get_settings().contract
    with service.client() as client:
        resp = client.post("/predict?explain=3", json=record())
        assert resp.status_code == 200, resp.text
        body = resp.json()
        [pred] = body["predictions"]
        exp = pred["explanation"]
        assert body["model_version"] == versions["linear"] and exp["method"] == "linear"
        assert {r["column"] for r in exp["reasons"]} <= set(contract.feature_columns) | {contract.timestamp_column}
        assert contract.id_column not in {r["column"] for r in exp["reasons"]}  # an id never explains
        p = 1 / (1 + np.exp(-exp["raw_output"]))
        assert p == pytest.approx(pred["probabilities"][str(contract.target.positive_class)], abs=1e-6)

        # The champion moves to the gradient-boosting version; the service swaps.
        mlflow.set_tracking_uri(mlflow_server)
        mlflow.MlflowClient().set_registered_model_alias(versions["name"], "champion", versions["trees"])
        reload = client.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY})
        assert reload.json()["model_version"] == versions["trees"], reload.text

        def logged() -> Any:
            r = client.get(f"/explain/{pred['request_id']}?k=3")
            return r if r.status_code == 200 else None

        answer = wait_for(logged, timeout=20).json()
        assert answer["model_version"] == versions["linear"]
        assert answer["explanation"] == exp

        tree = client.post("/predict?explain=3", json=record()).json()["predictions"][0]["explanation"]
        assert tree["method"] == "tree_shap" and tree["output"] == "log_odds"
        total = tree["base_value"] + sum(r["contribution"] for r in tree["reasons"]) + tree["other"]
        assert total == pytest.approx(tree["raw_output"], abs=1e-6)


def test_a_version_without_a_report_says_so(service: Service) -> None:
    # After the swap in the test above, the serving version (the tree model) has no report.
    model = httpx.get(f"{service.url}/model", timeout=10).json()
    assert model["report_url"] is None
    missing = httpx.get(f"{service.url}/model/report", timeout=10)
    assert missing.status_code == 404 and "has no report" in missing.json()["detail"]


def test_the_openapi_page_documents_explain(service: Service) -> None:
    schema = httpx.get(f"{service.url}/openapi.json", timeout=10).json()
    params = {p["name"] for p in schema["paths"]["/predict"]["post"]["parameters"]}
    assert "explain" in params and "/explain/{request_id}" in schema["paths"]
