"""Any tabular dataset, configs only: six datasets of different shapes through the whole loop.

For each: `mlops contract init` on the source as a person would run it -> collect -> preprocess -> train
(the gate promotes the first model) -> the API: /predict with the source's own column names, a CSV
/predict/batch, /feedback for a few hundred rows -> the monitor flow, which must produce a drift report
and a decision with performance judged. No Python is written for any dataset: the generated YAMLs are
used as written. Each row also checks that the champion's holdout score is in the range a plain
scikit-learn model reaches on the same split (a crippled family or a broken split fails), and prints the
seconds from `contract init` to the first correct prediction.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.servers import VENV_BIN
from core.settings import PROJECT_ROOT, Settings, load_settings
from tests.e2e.matrix_datasets import MATRIX, MatrixDataset
from tests.postgres import fresh_database

pytestmark = pytest.mark.slow

FEEDBACK_ROWS = 300
RESULTS: dict[str, float] = {}


def contract_init(ds: MatrixDataset, source: str, extra: list[str], out: Path) -> None:
    cmd = [str(VENV_BIN / "mlops"), "contract", "init", source, "--target", ds.target, "--name", ds.name,
           "--out", str(out), *extra]  # fmt: skip
    if ds.id_column:
        cmd += ["--id", ds.id_column]
    if ds.timestamp:
        cmd += ["--timestamp", ds.timestamp]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def baseline_holdout(settings: Settings) -> float:
    """A plain scikit-learn model on the same splits: gradient boosting on ordinal-coded inputs, fitted on
    everything but the holdout, scored on the holdout with the primary metric (the project's own metric
    code, on labels encoded the same way)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    from core.data.datasets import latest_processed
    from core.modeling.metrics import metric_value
    from core.modeling.training import encode_target, model_classes, predict_scores, xy

    contract = settings.contract
    data = latest_processed(settings)
    train = pd.concat([data.load(s) for s in ("train", "validation", "test")], ignore_index=True)
    holdout = data.load("holdout")

    def plain(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        X, y = xy(frame, contract)
        out = pd.DataFrame(index=X.index)
        for c in [*contract.numeric_features, *(f.name for f in contract.features if f.type == "category")]:
            out[c] = X[c] if c in contract.numeric_features else X[c].astype("category").cat.codes.astype(float)
        return out, y

    X, y = plain(train)
    Xh, yh = plain(holdout)
    model: Any = (
        HistGradientBoostingRegressor(random_state=0)
        if contract.task == "regression"
        else HistGradientBoostingClassifier(random_state=0)
    ).fit(X, y)
    scores = predict_scores(model, Xh, contract)
    codes = encode_target(yh, contract, model_classes(model) or None)
    return metric_value(contract.task, settings.training.primary_metric, codes, scores)


def champion_holdout(settings: Settings) -> float:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    mv = client.get_model_version_by_alias(settings.model_name, "champion")
    assert mv.run_id
    return float(client.get_run(mv.run_id).data.metrics[f"holdout_{settings.training.primary_metric}"])


@contextlib.contextmanager
def dataset_env(ds: MatrixDataset, root: Path, mlflow_server: str) -> Iterator[tuple[str, list[str]]]:
    database = fresh_database("matrix") if ds.name == "digits" else contextlib.nullcontext(None)
    with database as db, pytest.MonkeyPatch.context() as mp:
        folder = root / "data"
        folder.mkdir(parents=True)
        source, extra = ds.write(folder, db)
        # Where the project keeps its state and its registry: infrastructure, not the dataset's config.
        mp.setenv("MLOPS_STATE_DIR", str(root / "state"))
        mp.setenv("MLOPS_MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("MLOPS_CONFIG", f"configs/settings.yaml,{root / 'cfg' / 'settings.yaml'}")
        mp.setenv("MLOPS_ENVIRONMENT", "test")
        yield source, extra


@pytest.mark.parametrize("ds", MATRIX, ids=[d.name for d in MATRIX])
def test_dataset_runs_the_loop_with_configs_only(ds: MatrixDataset, tmp_path: Path, mlflow_server: str) -> None:
    from fastapi.testclient import TestClient

    from pipelines.collect import collect
    from pipelines.monitor import monitor
    from pipelines.preprocess import preprocess
    from pipelines.train import train
    from serving.app import create_app

    with dataset_env(ds, tmp_path, mlflow_server) as (source, extra):
        started = time.perf_counter()
        contract_init(ds, source, extra, tmp_path / "cfg")
        settings = load_settings()
        contract = settings.contract
        assert contract.task == ds.task, f"the task was guessed as {contract.task}"

        manifest = collect()
        assert manifest["status"] == "succeeded" and manifest["rows_quarantined"] == 0, manifest["fault_counts"]
        preprocess()
        result = train()
        assert result.decision is not None and result.decision["decision"] == "promoted", result.decision

        frame = pd.concat(
            [pd.read_csv(source) if source.endswith(".csv") else _read_any(source, extra)], ignore_index=True
        )
        inputs = frame.rename(columns=settings.source.rename)[contract.input_columns]
        with TestClient(create_app(settings)) as client:
            first = client.post("/predict", json=_records(inputs.head(1))[0])
            assert first.status_code == 200, first.text
            answer = first.json()["predictions"][0]
            seconds = time.perf_counter() - started
            if ds.labels:
                assert answer["prediction"] in ds.labels
                assert set(answer["probabilities"]) == {_text(label) for label in ds.labels}
            else:
                assert isinstance(answer["prediction"], float)
            RESULTS[ds.name] = seconds
            print(f"\n{ds.name} ({ds.shape}): {seconds:.1f} s from contract init to the first prediction")

            # The source's own column names in the OpenAPI document.
            documented = client.get("/openapi.json").json()["components"]["schemas"]["RecordIn"]["properties"]
            assert set(documented) == set(contract.input_columns)

            csv = inputs.head(50).to_csv(index=False)
            batch = client.post("/predict/batch", content=csv, headers={"content-type": "text/csv"})
            assert batch.status_code == 200, batch.text
            assert len(pd.read_csv(io.StringIO(batch.text))) == 50

            rows = inputs.sample(FEEDBACK_ROWS, replace=len(inputs) < FEEDBACK_ROWS, random_state=0)
            labels = frame.loc[rows.index, ds.target].tolist()
            served = client.post("/predict", json=_records(rows))
            assert served.status_code == 200, served.text
            predictions = served.json()["predictions"]
            assert len(predictions) == len(labels)
            # The labels in one list, as a review queue's verdicts arrive; the first also alone.
            items = [
                {"request_id": p["request_id"], "label": _plain(y)} for p, y in zip(predictions, labels, strict=True)
            ]
            sent = client.post("/feedback", json=items[0])
            assert sent.status_code == 202, sent.text
            sent = client.post("/feedback", json=items[1:])
            assert sent.status_code == 202 and sent.json() == {"accepted": len(items) - 1}, sent.text
            client.app.state.prediction_log.flush()

        record = monitor(trigger=False)
        assert record["status"] == "ok", record
        assert Path(record["report_html"]).exists()
        assert not any(r.startswith("performance not judged") for r in record["reasons"]), record["reasons"]
        assert any(settings.monitoring.performance_metric in r for r in record["reasons"]), record["reasons"]

        champion, plain = champion_holdout(settings), baseline_holdout(settings)
        metric = settings.training.primary_metric
        from core.modeling.catalogue import higher_is_better

        print(f"{ds.name}: champion holdout {metric} {champion:.4f}, plain scikit-learn {plain:.4f}")
        if higher_is_better(metric):
            assert champion >= plain - max(0.05, 0.1 * abs(plain)), (champion, plain)
        else:
            assert champion <= plain * 1.15 + 1e-9, (champion, plain)


def _read_any(source: str, extra: list[str]) -> pd.DataFrame:
    if source.endswith(".parquet"):
        return pd.read_parquet(source)
    import sqlalchemy as sa

    from core.databases import engine_for

    engine = engine_for(source)
    try:
        return pd.read_sql(sa.text(f"SELECT * FROM {extra[extra.index('--table') + 1]}"), engine)
    finally:
        engine.dispose()


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _text(value: Any) -> str:
    from core.contract import label_text

    return label_text(value)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON records, as a client would send them: NaN as null, timestamps as text."""
    out = frame.astype(object).where(frame.notna(), None)
    return [{k: (_plain(v) if not isinstance(v, pd.Timestamp) else v.isoformat()) for k, v in r.items()}
            for r in out.to_dict("records")]  # fmt: skip
