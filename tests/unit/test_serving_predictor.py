"""The compiled predict path against the scikit-learn Pipeline it replaces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from core.inference.predictor import Predictor, columns_from_frame, columns_from_records
from core.inference.sample import synthetic_frame
from core.modeling.compiled import CompiledFeatures
from core.modeling.features import build_preprocessor, to_model_input
from core.settings import get_settings
from serving.example_model import labelled_frame


def fitted(estimator: Any) -> Pipeline:
    contract = get_settings().contract
    X, y = labelled_frame(contract, 800, seed=3)
    return Pipeline([("features", build_preprocessor(contract)), ("model", estimator)]).fit(X, y)


@pytest.fixture(scope="module")
def logistic() -> Pipeline:
    return fitted(LogisticRegression(max_iter=300))


@pytest.fixture(scope="module")
def boosting() -> Pipeline:
    return fitted(HistGradientBoostingClassifier(max_iter=20, random_state=0))


@pytest.mark.parametrize("rows", [10, 500])  # the few-rows path and the vectorised one
def test_a_nan_in_a_text_column_is_imputed_like_none(logistic: Pipeline, rows: int) -> None:
    contract = get_settings().contract
    frame = synthetic_frame(contract, rows, seed=4)
    frame["channel"] = frame["channel"].astype(object)
    frame.loc[[2, 7], "channel"] = None
    compiled = CompiledFeatures.from_pipeline(logistic, contract)
    columns = columns_from_frame(frame, contract)
    with_none = compiled.transform(columns)
    columns["channel"][[2, 7]] = [np.nan, float("nan")]
    np.testing.assert_array_equal(compiled.transform(columns), with_none)
    expected = logistic[0].transform(to_model_input(frame, contract))
    np.testing.assert_allclose(with_none, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("use_onnx", [True, False])
@pytest.mark.parametrize("family", ["logistic", "boosting"])
def test_predictions_match_the_pipeline(family: str, use_onnx: bool, request: pytest.FixtureRequest) -> None:
    pipeline = request.getfixturevalue(family)
    contract = get_settings().contract
    predictor = Predictor.build(pipeline, contract, threshold=0.5, positive_class=1, use_onnx=use_onnx)
    assert predictor.runtime in (("onnx", "numpy") if use_onnx else ("numpy",))
    assert predictor.parity_max_abs_diff is not None and predictor.parity_max_abs_diff <= 1e-4
    frame = synthetic_frame(contract, 300, seed=17)
    result = predictor.predict(columns_from_frame(frame, contract))
    expected = pipeline.predict_proba(to_model_input(frame, contract))
    assert result.probabilities is not None
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-4)
    assert result.labels == [int(p >= 0.5) for p in expected[:, 1]]


def test_logistic_regression_runs_on_onnx(logistic: Pipeline) -> None:
    predictor = Predictor.build(logistic, get_settings().contract, threshold=0.5, positive_class=1)
    assert predictor.runtime == "onnx", predictor.fallback_reason


def test_threshold_from_metadata_decides_the_label(logistic: Pipeline) -> None:
    contract = get_settings().contract
    frame = synthetic_frame(contract, 200, seed=5)
    cols = columns_from_frame(frame, contract)
    low = Predictor.build(logistic, contract, threshold=0.0, positive_class=1, use_onnx=False).predict(cols)
    high = Predictor.build(logistic, contract, threshold=1.01, positive_class=1, use_onnx=False).predict(cols)
    assert set(low.labels) == {1} and set(high.labels) == {0}


def test_unknown_step_falls_back_to_the_pipeline() -> None:
    contract = get_settings().contract
    X, y = labelled_frame(contract, 400, seed=4)
    pipeline = Pipeline(
        [
            ("features", build_preprocessor(contract)),
            ("square", FunctionTransformer(np.square)),
            ("model", LogisticRegression(max_iter=300)),
        ]
    ).fit(X, y)
    predictor = Predictor.build(pipeline, contract, threshold=0.5, positive_class=1)
    assert predictor.runtime == "sklearn"
    assert predictor.fallback_reason
    frame = synthetic_frame(contract, 50, seed=8)
    result = predictor.predict(columns_from_frame(frame, contract))
    np.testing.assert_allclose(result.probabilities, pipeline.predict_proba(to_model_input(frame, contract)))


def test_records_and_frames_give_the_same_columns(logistic: Pipeline) -> None:
    contract = get_settings().contract
    frame = synthetic_frame(contract, 20, seed=2)
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for r in records:
        r["event_time"] = r["event_time"].to_pydatetime()
    predictor = Predictor.build(logistic, contract, threshold=0.5, positive_class=1, use_onnx=False)
    a = predictor.predict(columns_from_records(records, contract)).probabilities
    b = predictor.predict(columns_from_frame(frame, contract)).probabilities
    np.testing.assert_allclose(a, b)


def test_aware_timestamps_are_read_as_utc(logistic: Pipeline) -> None:
    contract = get_settings().contract
    base = synthetic_frame(contract, 1, seed=1, edge_cases=False).to_dict("records")[0]
    utc = {**base, "event_time": datetime(2026, 3, 2, 23, 30, tzinfo=UTC)}
    plus2 = {**base, "event_time": datetime(2026, 3, 3, 1, 30, tzinfo=timezone(timedelta(hours=2)))}
    cols_a = columns_from_records([utc], contract)
    cols_b = columns_from_records([plus2], contract)
    assert cols_a["event_time"][0] == cols_b["event_time"][0] == np.datetime64("2026-03-02T23:30:00")


@pytest.mark.parametrize("family", ["logistic", "boosting"])
def test_one_record_at_a_time_matches_the_batch(family: str, request: pytest.FixtureRequest) -> None:
    """A single record takes the compiled path's few-rows branches (one-hot by dict lookup), a batch the
    vectorised ones; both give the same probabilities, and an aware timestamp is read as UTC."""
    pipeline = request.getfixturevalue(family)
    contract = get_settings().contract
    predictor = Predictor.build(pipeline, contract, threshold=0.5, positive_class=1, use_onnx=False)
    frame = synthetic_frame(contract, 100, seed=23)
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    one_by_one = np.vstack([predictor.predict(columns_from_records([r], contract)).probabilities for r in records])
    together = predictor.predict(columns_from_records(records, contract)).probabilities
    np.testing.assert_allclose(one_by_one, together, atol=1e-12)
    aware = {**records[0], "event_time": datetime(2026, 3, 3, 1, 30, tzinfo=timezone(timedelta(hours=2)))}
    naive = {**records[0], "event_time": datetime(2026, 3, 2, 23, 30)}
    a, b = (predictor.predict(columns_from_records([r], contract)).probabilities for r in (aware, naive))
    assert a is not None and b is not None and a.tolist() == b.tolist()
