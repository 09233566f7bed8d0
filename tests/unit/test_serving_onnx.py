"""Every family the training flow trains reaches ONNX Runtime, for binary, multiclass and regression
contracts, and matches its scikit-learn Pipeline (core/inference/onnx.py's recipes, gated by the predictor's
parity check). Small models: the recipes, not the models, are under test."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from core.contract import DatasetContract, parse_contract
from core.inference.predictor import Predictor, columns_from_frame
from core.inference.sample import synthetic_frame
from core.modeling.families import FAMILIES, build_pipeline
from core.modeling.features import to_model_input
from core.settings import PROJECT_ROOT, get_settings

SMALL: dict[str, dict[str, Any]] = {
    "random_forest": {"n_estimators": 10},
    "hist_gradient_boosting": {"max_iter": 20},
    "svm": {"n_components": 50},
    "mlp": {"max_iter": 30, "width": 16},
}
TOLERANCE = get_settings().serving.parity_tolerance


def _contract(task: str) -> DatasetContract:
    if task == "binary":
        return get_settings().contract
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "fraud" / "dataset.yaml").read_text())
    raw["task"] = task
    raw["slice_columns"] = ["country"]
    raw["target"] = (
        {"name": "channel", "classes": ["pos", "online", "atm"]} if task == "multiclass" else {"name": "amount"}
    )
    return parse_contract(raw)


def _labels(X: pd.DataFrame, task: str) -> pd.Series:
    """A target that depends on the features (amounts, velocity, time of day)."""
    hour = X["event_time"].dt.hour.to_numpy()
    score = np.log1p(X["amount_sum_24h"].fillna(0).to_numpy()) + 0.3 * X["txn_count_1h"].to_numpy() + np.sin(hour)
    if task == "regression":
        return pd.Series(50 * score)  # values in the hundreds: the tolerance scales with them
    codes = np.digitize(score, np.quantile(score, [0.6, 0.9] if task == "multiclass" else [0.8]))
    return pd.Series(np.asarray(["pos", "online", "atm"] if task == "multiclass" else [0, 1], dtype=object)[codes])


@pytest.fixture(scope="module", params=["binary", "multiclass", "regression"])
def task(request: pytest.FixtureRequest) -> tuple[str, DatasetContract, pd.DataFrame, pd.Series]:
    contract = _contract(request.param)
    X = to_model_input(synthetic_frame(contract, 600, seed=5), contract)
    y = _labels(X, request.param)
    if request.param == "binary":
        y = y.astype(int)
    return request.param, contract, X, y


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_and_task_serves_on_onnx_runtime(
    family: str, task: tuple[str, DatasetContract, pd.DataFrame, pd.Series]
) -> None:
    name, contract, X, y = task
    pipeline = build_pipeline(contract, family, SMALL.get(family), seed=0).fit(X, y)
    binary = name == "binary"
    predictor = Predictor.build(
        pipeline, contract, threshold=0.5 if binary else None, positive_class=1 if binary else None
    )
    assert predictor.runtime == "onnx", predictor.fallback_reason
    assert predictor.fallback_reason is None
    # Fed what the session declares: float64 where float32 features would cross the trees' thresholds.
    assert predictor._onnx is not None
    assert predictor._onnx.input_dtype == (np.float64 if family == "hist_gradient_boosting" else np.float32)

    frame = synthetic_frame(contract, 300, seed=17)  # rows the parity check did not see
    result = predictor.predict(columns_from_frame(frame, contract))
    inputs = to_model_input(frame, contract)
    if name == "regression":
        expected = pipeline.predict(inputs)
        allowed = TOLERANCE * max(1.0, float(np.abs(expected).max()))
        assert predictor.parity_max_abs_diff is not None and predictor.parity_max_abs_diff <= allowed
        np.testing.assert_allclose(result.labels, expected, rtol=0, atol=allowed)
    else:
        expected = pipeline.predict_proba(inputs)
        assert predictor.parity_max_abs_diff is not None and predictor.parity_max_abs_diff <= TOLERANCE
        assert result.probabilities is not None
        np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=TOLERANCE)
        assert result.classes == [c.item() if hasattr(c, "item") else c for c in pipeline.classes_]
