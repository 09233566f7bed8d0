"""Reason codes through the API, on datasets that are not the fraud one (binary with string labels whose
positive class sorts first, multiclass), in process against a real MLflow registry (SQLite store) and a
real prediction log: ?explain=k on /predict and /predict/batch, and GET /explain/{request_id} answered by
the version that made the prediction after the champion has moved on.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from core.settings import Settings, load_settings

CLASSES = {"binary": ["churned", "stayed"], "multiclass": ["low", "mid", "high"]}


def contract_for(task: str) -> dict[str, Any]:
    target: dict[str, Any] = {"name": "outcome", "classes": CLASSES[task]}
    if task == "binary":
        target["positive_class"] = "churned"
    return {
        "name": f"explain-{task}",
        "task": task,
        "timestamp_column": "Seen at",
        "derived_time_features": ["hour_of_day"],
        "target": target,
        "columns": [
            {"name": "Seen at", "type": "datetime"},
            {"name": "Tenure (months)", "type": "float", "nullable": True, "example": 12.0},
            {"name": "spend/€", "type": "float", "example": 40.0},
            {"name": "2nd plan", "type": "category", "categories": ["basic", "plus", "pro"], "example": "pro"},
            {"name": "outcome", "type": "string"},
        ],
    }


def training_rows(task: str, n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    tenure, spend = rng.uniform(0, 60, n), rng.normal(50, 15, n)
    plan = rng.choice(["basic", "plus", "pro"], n)
    frame = pd.DataFrame(
        {
            "Seen at": pd.Timestamp("2025-03-01") + pd.to_timedelta(rng.integers(0, 24 * 60, n), unit="h"),
            "Tenure (months)": tenure,
            "spend/€": spend,
            "2nd plan": plan,
        }
    )
    signal = -0.08 * tenure + 0.04 * spend + np.where(plan == "pro", 1.5, 0.0) + rng.normal(0, 0.5, n)
    if task == "binary":
        return frame, np.where(signal > np.median(signal), "churned", "stayed").astype(object)
    return frame, np.asarray(CLASSES[task], dtype=object)[np.digitize(signal, np.quantile(signal, [1 / 3, 2 / 3]))]


def register(settings: Settings, family: str, params: dict[str, Any], task: str, experiment_id: str) -> str:
    import mlflow

    from core.modeling.families import build_pipeline
    from core.modeling.features import to_model_input
    from core.registry.artefact import log_model, metadata_for

    contract = settings.contract
    frame, y = training_rows(task, 500, seed=1)
    X = to_model_input(frame, contract)
    pipeline = build_pipeline(contract, family, params, seed=0).fit(X, y)
    threshold = 0.5 if task == "binary" else None
    metadata = metadata_for(pipeline, contract, family=family, threshold=threshold, primary_metric=None)
    with mlflow.start_run(experiment_id=experiment_id):
        uri = log_model(pipeline, metadata, X.head(2))
    version = str(mlflow.register_model(uri, settings.model_name).version)
    mlflow.MlflowClient().set_model_version_tag(settings.model_name, version, "family", family)
    return version


@pytest.fixture(scope="module", params=["binary", "multiclass"])
def task(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def settings(task: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    import mlflow

    root = tmp_path_factory.mktemp(f"explain-{task}")
    (root / "dataset.yaml").write_text(yaml.safe_dump(contract_for(task), allow_unicode=True))
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "MLOPS_CONFIG": "configs/settings.yaml",
            "MLOPS_CONTRACT_PATH": str(root / "dataset.yaml"),
            "MLOPS_STATE_DIR": str(root / "state"),
            "MLOPS_MLFLOW_TRACKING_URI": tracking,
            "MLOPS_ENVIRONMENT": "test",
            "MLOPS_SERVING__LOG_FLUSH_S": "0.1",
            "MLOPS_SERVING__USE_ONNX": "false",
        }.items():
            mp.setenv(key, value)
        settings = load_settings()
        # The suite runs in one process: the global tracking URI goes back to what it was afterwards.
        before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(tracking)
        try:
            # By id, not set_experiment: that would leave this store's experiment active for later tests.
            experiment_id = mlflow.create_experiment(f"explain-{task}")
            linear = register(settings, "logistic", {}, task, experiment_id)
            mlflow.MlflowClient().set_registered_model_alias(settings.model_name, "champion", linear)
            yield settings
        finally:
            mlflow.set_tracking_uri(before[0])
            mlflow.set_registry_uri(before[1])


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def _experiment(task: str) -> str:
    import mlflow

    return str(mlflow.get_experiment_by_name(f"explain-{task}").experiment_id)


def rows(n: int = 4) -> list[dict[str, Any]]:
    frame, _ = training_rows("binary", n, seed=5)
    frame["Seen at"] = frame["Seen at"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return frame.to_dict("records")


def check_additive(explanation: dict[str, Any]) -> None:
    total = explanation["base_value"] + sum(r["contribution"] for r in explanation["reasons"]) + explanation["other"]
    assert total == pytest.approx(explanation["raw_output"], abs=1e-6)


def check_matches_probabilities(task: str, explanation: dict[str, Any], probabilities: dict[str, float]) -> None:
    """The explained output is the score the service returned: sigmoid(log-odds) is P(positive) (binary);
    the explained class is the predicted one (multiclass)."""
    if task == "binary":
        assert explanation["explained_class"] == "churned"
        p = 1 / (1 + np.exp(-explanation["raw_output"]))
        assert p == pytest.approx(probabilities["churned"], abs=1e-6)
    else:
        assert explanation["explained_class"] == max(probabilities, key=probabilities.__getitem__)


def test_predict_with_explain_gives_k_reasons_in_the_contracts_columns(client: Any, task: str) -> None:
    resp = client.post("/predict?explain=2", json=rows())
    assert resp.status_code == 200, resp.text
    for pred in resp.json()["predictions"]:
        exp = pred["explanation"]
        assert exp["method"] == "linear"
        assert exp["output"] == ("log_odds" if task == "binary" else "logit")
        assert len(exp["reasons"]) == 2
        assert {r["column"] for r in exp["reasons"]} <= {"Seen at", "Tenure (months)", "spend/€", "2nd plan"}
        check_additive(exp)
        check_matches_probabilities(task, exp, pred["probabilities"])
    plain = client.post("/predict", json=rows(1)).json()["predictions"][0]
    assert plain["explanation"] is None


@pytest.mark.parametrize("k", [-1, 51, "three"])
def test_a_bad_explain_option_is_refused_naming_it(client: Any, k: Any) -> None:
    resp = client.post(f"/predict?explain={k}", json=rows(1))
    assert resp.status_code == 422 and "explain" in resp.json()["detail"]


def test_batch_csv_and_ndjson_carry_reason_codes(client: Any, task: str) -> None:
    csv = pd.DataFrame(rows(5)).to_csv(index=False)
    resp = client.post("/predict/batch?explain=3", content=csv, headers={"content-type": "text/csv"})
    assert resp.status_code == 200, resp.text
    answer = pd.read_csv(io.StringIO(resp.text))
    reason_cols = [f"reason_{i}_{part}" for i in (1, 2, 3) for part in ("column", "value", "contribution")]
    assert {"explain_method", "explained_class", "base_value", "raw_output", *reason_cols, "other"} <= set(answer)
    total = answer["base_value"] + answer[[f"reason_{i}_contribution" for i in (1, 2, 3)]].sum(axis=1) + answer["other"]
    np.testing.assert_allclose(total, answer["raw_output"], atol=1e-6)
    if task == "binary":  # P(churned) in the CSV is rounded to 6 decimals
        np.testing.assert_allclose(1 / (1 + np.exp(-answer["raw_output"])), answer["p_churned"], atol=2e-6)
    else:
        assert (answer["explained_class"] == answer["prediction"]).all()
    ndjson = client.post(
        "/predict/batch?explain=1&format=ndjson", content=csv, headers={"content-type": "text/csv"}
    ).text.splitlines()
    first = json.loads(ndjson[0])["explanation"]
    assert len(first["reasons"]) == 1 and first["method"] == "linear"
    check_additive(first)


def test_explain_a_logged_prediction_by_the_version_that_made_it(client: Any, settings: Settings, task: str) -> None:
    import mlflow

    before = client.post("/predict?explain=4", json=rows(1)).json()
    [pred] = before["predictions"]
    client.app.state.prediction_log.flush()
    linear_version = before["model_version"]
    # The champion moves on to a tree model: the old prediction is still explained by the linear one.
    trees = register(settings, "hist_gradient_boosting", {"max_iter": 30}, task, _experiment(task))
    mlflow.MlflowClient().set_registered_model_alias(settings.model_name, "champion", trees)
    assert client.app.state.store.refresh()
    resp = client.get(f"/explain/{pred['request_id']}?k=4")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_version"] == linear_version != trees
    assert body["prediction"] == pred["prediction"]
    assert body["explanation"] == pred["explanation"]  # the same inputs, read back from the log
    # New predictions come from the tree model and are explained by TreeSHAP, exactly.
    after = client.post("/predict?explain=3", json=rows(2)).json()
    assert after["model_version"] == trees
    for p in after["predictions"]:
        assert p["explanation"]["method"] == "tree_shap"
        check_additive(p["explanation"])
        check_matches_probabilities(task, p["explanation"], p["probabilities"])
    client.app.state.prediction_log.flush()
    logged = client.get(f"/explain/{after['predictions'][0]['request_id']}").json()
    assert logged["model_version"] == trees and len(logged["explanation"]["reasons"]) == 3
    # A batch row's id is explained too.
    csv = pd.DataFrame(rows(2)).to_csv(index=False)
    batch = client.post("/predict/batch", content=csv, headers={"content-type": "text/csv"})
    client.app.state.prediction_log.flush()
    row_id = pd.read_csv(io.StringIO(batch.text))["request_id"].iloc[1]
    assert client.get(f"/explain/{row_id}").json()["explanation"]["method"] == "tree_shap"


def test_a_family_without_an_exact_method_says_so(client: Any, settings: Settings, task: str) -> None:
    import mlflow

    svm = register(settings, "svm", {"n_components": 20}, task, _experiment(task))
    mlflow.MlflowClient().set_registered_model_alias(settings.model_name, "champion", svm)
    assert client.app.state.store.refresh()
    [pred] = client.post("/predict?explain=3", json=rows(1)).json()["predictions"]
    assert pred["explanation"]["method"] == "unavailable"
    assert "no exact attribution" in pred["explanation"]["reason"] and pred["explanation"]["reasons"] == []
    csv = pd.DataFrame(rows(2)).to_csv(index=False)
    answer = pd.read_csv(
        io.StringIO(client.post("/predict/batch?explain=2", content=csv, headers={"content-type": "text/csv"}).text)
    )
    assert (answer["explain_method"] == "unavailable").all() and answer["explain_note"].notna().all()


def test_unknown_or_malformed_request_ids(client: Any) -> None:
    missing = client.get("/explain/not-logged-anywhere")
    assert missing.status_code == 404 and "not-logged-anywhere" in missing.json()["detail"]
    assert client.get("/explain/bad id with spaces").status_code == 422


def test_openapi_documents_the_explain_option(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/predict", "/predict/batch"):
        [param] = [p for p in paths[path]["post"]["parameters"] if p["name"] == "explain"]
        assert "reason codes" in param["description"].lower()
    assert "get" in paths["/explain/{request_id}"]
