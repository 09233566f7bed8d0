"""The API of a dataset that is not the fraud one: the source's own column names as JSON keys, string
labels in answers and feedback, every form of timestamp, multiclass probabilities in the log.

In process (the FastAPI reference's TestClient on the real app), against a real MLflow registry (a
SQLite store) and a real prediction log: nothing is mocked, no server is needed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from core.contract import DatasetContract
from core.settings import Settings, load_settings

LABELS = ["cultivar_a", "cultivar_b", "cultivar_c"]
CONTRACT: dict[str, Any] = {
    "name": "cellar",
    "task": "multiclass",
    "timestamp_column": "Tasted at",
    "target": {"name": "cultivar", "classes": LABELS},
    "columns": [
        {"name": "Tasted at", "type": "datetime"},
        {"name": "Alcohol (%)", "type": "float", "min": 0, "max": 30, "example": 13.2},
        {"name": "malic/acid", "type": "float", "nullable": True, "example": 1.8},
        {
            "name": "2nd cellar",
            "type": "category",
            "categories": ["north", "south"],
            "allow_unknown": True,
            "nullable": True,
            "example": "north",
        },
        {"name": "Île", "type": "string", "nullable": True, "example": "x"},
        {"name": "cultivar", "type": "category", "categories": LABELS},
    ],
}


def _frame(contract: DatasetContract, n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    alcohol = rng.uniform(11, 15, n)
    frame = pd.DataFrame(
        {
            "Tasted at": pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 86_400 * 90, n), unit="s"),
            "Alcohol (%)": alcohol,
            "malic/acid": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(0.5, 5, n)),
            "2nd cellar": rng.choice(["north", "south", None], n),
            "Île": rng.choice(["x", "y"], n),
        }
    )
    y = pd.Series(np.asarray(LABELS, dtype=object)[np.digitize(alcohol, [12.3, 13.7])])
    return frame, y


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    import mlflow

    from core.modeling.families import build_pipeline
    from core.modeling.features import to_model_input
    from core.registry.artefact import log_model, metadata_for

    root = tmp_path_factory.mktemp("cellar")
    contract_path = root / "dataset.yaml"
    contract_path.write_text(yaml.safe_dump(CONTRACT, allow_unicode=True))
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "MLOPS_CONFIG": "configs/settings.yaml",
            "MLOPS_CONTRACT_PATH": str(contract_path),
            "MLOPS_STATE_DIR": str(root / "state"),
            "MLOPS_MLFLOW_TRACKING_URI": tracking,
            "MLOPS_ENVIRONMENT": "test",
            "MLOPS_SERVING__LOG_FLUSH_S": "0.1",
        }.items():
            mp.setenv(key, value)
        settings = load_settings()
        contract = settings.contract
        X, y = _frame(contract, 600, seed=1)
        pipeline = build_pipeline(contract, "logistic", seed=0).fit(to_model_input(X, contract), y)
        previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(tracking)
        # By id: mlflow.set_experiment would set the process's active experiment for every later test.
        client = mlflow.MlflowClient(tracking)
        experiment = client.get_experiment_by_name("cellar")
        experiment_id = experiment.experiment_id if experiment else client.create_experiment("cellar")
        with mlflow.start_run(experiment_id=experiment_id):
            uri = log_model(
                pipeline,
                metadata_for(pipeline, contract, family="logistic", threshold=None, primary_metric="f1_macro"),
                to_model_input(X.head(3), contract),
            )
        version = mlflow.register_model(uri, settings.model_name).version
        mlflow.MlflowClient().set_registered_model_alias(settings.model_name, "champion", version)
        yield settings
        # Process-wide in mlflow: later tests in this process must not find this module's registry.
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def record(**overrides: Any) -> dict[str, Any]:
    base = {"Tasted at": "2025-02-01", "Alcohol (%)": 14.5, "malic/acid": None, "2nd cellar": "north", "Île": "x"}
    return {**base, **overrides}


def test_openapi_documents_the_sources_own_column_names(client: Any) -> None:
    schema = client.get("/openapi.json").json()
    properties = schema["components"]["schemas"]["RecordIn"]["properties"]
    assert set(properties) == {"Tasted at", "Alcohol (%)", "malic/acid", "2nd cellar", "Île"}


def test_predict_takes_original_names_and_answers_with_the_datasets_labels(client: Any) -> None:
    resp = client.post("/predict", json=record())
    assert resp.status_code == 200, resp.text
    [pred] = resp.json()["predictions"]
    assert pred["prediction"] == "cultivar_c"  # 14.5% alcohol: the third class by construction
    assert set(pred["probabilities"]) == set(LABELS)
    assert pred["probabilities"]["cultivar_c"] == max(pred["probabilities"].values())


def test_a_multiclass_model_fills_the_score_histogram_with_its_top_class_probability(client: Any) -> None:
    """The dashboard's score panel: empty for a multiclass fork until the top-class probability went in."""

    def scored() -> tuple[float, float]:
        text = client.get("/metrics").text
        values = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("serving_prediction_score_")
        }
        return values.get("serving_prediction_score_count", 0.0), values.get("serving_prediction_score_sum", 0.0)

    count, total = scored()
    resp = client.post("/predict", json=[record(), record()])
    assert resp.status_code == 200, resp.text
    top = [max(p["probabilities"].values()) for p in resp.json()["predictions"]]
    after_count, after_total = scored()
    assert after_count == count + 2
    assert after_total - total == pytest.approx(sum(top), abs=1e-6)


@pytest.mark.parametrize(
    "stamp", ["2025-02-01", "2025-02-01T10:00:00+02:00", "2025-02-01T08:00:00Z", 1738396800, "1738396800"]
)
def test_every_form_of_timestamp_is_accepted(client: Any, stamp: Any) -> None:
    assert client.post("/predict", json=record(**{"Tasted at": stamp})).status_code == 200


def test_an_unreadable_timestamp_or_a_safe_name_is_refused_naming_the_column(client: Any) -> None:
    resp = client.post("/predict", json=record(**{"Tasted at": "next tuesday"}))
    assert resp.status_code == 422 and "Tasted at" in resp.json()["detail"]
    safe = {"Alcohol_": 14.0, **{k: v for k, v in record().items() if k != "Alcohol (%)"}}
    resp = client.post("/predict", json=safe)  # the identifier is code's, not the API's
    assert resp.status_code == 422 and "Alcohol (%)" in resp.json()["detail"]


def test_a_batch_csv_with_date_only_timestamps_answers_per_label(client: Any) -> None:
    csv = (
        "Tasted at,Alcohol (%),malic/acid,2nd cellar,Île\n"
        "2025-02-01,14.5,,north,x\n"
        "2025-02-02,11.2,2.5,west,y\n"
        "1738396800,12.9,1.0,,\n"
    )
    resp = client.post("/predict/batch", content=csv, headers={"content-type": "text/csv"})
    assert resp.status_code == 200, resp.text
    answer = pd.read_csv(io.StringIO(resp.text))
    assert list(answer.columns) == ["request_id", "prediction", *(f"p_{c}" for c in LABELS), "flags"]
    assert answer["prediction"].tolist()[:2] == ["cultivar_c", "cultivar_a"]
    assert answer["flags"].tolist()[1] == "2nd cellar: unknown category 'west'"


def test_feedback_takes_the_datasets_labels(client: Any, settings: Settings) -> None:
    resp = client.post("/predict", json=record())
    request_id = resp.json()["predictions"][0]["request_id"]
    assert client.post("/feedback", json={"request_id": request_id, "label": "cultivar_c"}).status_code == 202
    wrong = client.post("/feedback", json={"request_id": request_id, "label": 2})
    assert wrong.status_code == 422 and "label" in wrong.json()["detail"]
    both = [{"request_id": request_id, "label": "cultivar_a"}, {"request_id": request_id, "label": "cultivar_b"}]
    assert client.post("/feedback", json=both).json() == {"accepted": 2}
    assert client.post("/feedback", json=[*both, {"request_id": request_id, "label": 2}]).status_code == 422


def test_the_log_keeps_every_class_probability_and_monitoring_reads_the_names_back(
    client: Any, settings: Settings
) -> None:
    from monitoring.sources import read_window

    for _ in range(3):
        client.post("/predict", json=record())
    client.app.state.prediction_log.flush()
    window = read_window(settings, window_rows=50, window_hours=None)
    assert {"Alcohol (%)", "malic/acid", "2nd cellar", "Île", "Tasted at"} <= set(window.columns)
    assert {f"p_{c}" for c in LABELS} <= set(window.columns)
    assert window[[f"p_{c}" for c in LABELS]].sum(axis=1).round(6).eq(1.0).all()
    assert set(window["prediction"]) <= set(LABELS)
