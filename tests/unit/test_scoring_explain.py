"""Batch reason codes (scoring.explain): the API's explanation of the same rows, written beside the
predictions; a family without an exact method says so in the manifest and leaves the columns null."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.contract import ROW_KEY
from core.inference import scoring
from core.inference.predictor import columns_from_records, predictor_for
from core.modeling.explain import top_reasons
from core.modeling.families import build_pipeline
from core.modeling.features import to_model_input
from core.settings import load_settings
from tests.scoring_support import collect, fit, write_dataset

K = 2


def _scored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str, family: str | None = None) -> tuple:
    data = write_dataset(task, tmp_path / task, n=300)
    for key, value in {**data.env, "MLOPS_SCORING__EXPLAIN": str(K)}.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    collect(settings)
    if family is None:
        pipeline, _ = fit(settings, data.frame)
    else:
        contract = settings.contract
        X = to_model_input(data.frame.drop(columns=[contract.target.name]), contract)
        pipeline = build_pipeline(contract, family, seed=0).fit(X, data.frame[contract.target.name])
    predictor = predictor_for(pipeline, {}, settings.contract, use_onnx=False)
    model = scoring.ScoringModel("m", "1", "run-1", predictor)
    manifest = scoring.score(settings, model=model)
    files = sorted((scoring.output_dir(settings) / "predictions").rglob("*.parquet"))
    out = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    return settings, data, predictor, manifest, out


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_written_reason_codes_equal_the_api_explainers(
    task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, data, predictor, manifest, out = _scored(tmp_path, monkeypatch, task)
    assert manifest["explain"] == {"k": K, "method": "linear", "output": predictor.explainer.output}
    contract = settings.contract
    key = contract.key_column
    assert key != ROW_KEY
    # The API's path (serving/routes/predictions.py) on the same rows, sent as JSON-like records.
    source = data.frame.set_index(data.frame[key].astype(str))
    records = source.loc[out[key], contract.input_columns].replace({np.nan: None}).to_dict("records")
    columns = columns_from_records(records, contract)
    result = predictor.predict(columns)
    api = top_reasons(predictor.explain(columns, result), columns, K)
    assert len(api) == len(out) == manifest["scored"]
    for i, answer in enumerate(api):
        row = out.iloc[i]
        assert row["explain_method"] == answer["method"] == "linear"
        assert row["base_value"] == pytest.approx(answer["base_value"], abs=1e-9)
        assert row["raw_output"] == pytest.approx(answer["raw_output"], abs=1e-9)
        assert row["other"] == pytest.approx(answer["other"], abs=1e-9)
        for j, reason in enumerate(answer["reasons"], start=1):
            written = row[f"reason_{j}"]
            assert written["column"] == reason["column"]
            assert written["contribution"] == pytest.approx(reason["contribution"], abs=1e-9)
        # Additivity holds on what was written: base + reasons + other == raw output.
        total = row["base_value"] + sum(row[f"reason_{j}"]["contribution"] for j in range(1, K + 1)) + row["other"]
        assert total == pytest.approx(row["raw_output"], abs=1e-6)


def test_a_family_without_an_exact_method_says_so_and_writes_null_reasons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, _, manifest, out = _scored(tmp_path, monkeypatch, "multiclass", family="mlp")
    assert manifest["explain"]["method"] == "unavailable"
    assert "no exact attribution" in manifest["explain"]["reason"]
    for column in ("explain_method", "base_value", "raw_output", "reason_1", "reason_2", "other"):
        assert out[column].isna().all(), column
    assert out["prediction"].notna().all()
