"""core.modeling.compiled: the fitted preprocessor as numpy functions, step kind by step kind, against
scikit-learn's own transform; and the project's transformers compiled by their own vectorised form."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from core.inference.predictor import Predictor, columns_from_frame
from core.inference.sample import synthetic_frame
from core.modeling.compiled import CompiledFeatures, NotCompilableError, compile_step
from core.modeling.features import MISSING, TimeFeatures, build_preprocessor, encode_times, to_model_input
from core.settings import get_settings
from serving.example_model import labelled_frame


def _numbers(seed: int, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(3, 1, (n, 3))
    x[rng.random((n, 3)) < 0.1] = np.nan
    x[:, 2] = np.nan  # a column missing everywhere but one row
    x[0, 2] = 4.0
    return x


def _texts(seed: int, n: int = 300, *, unseen: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array(["a", "b", "c", "unseen" if unseen else "a"], dtype=object), (n, 2))
    x[rng.random((n, 2)) < 0.1] = None  # serving's columns hold None for a missing text
    return x


def _times(seed: int, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ts = rng.integers(-(10**9), 3 * 10**9, (n, 2)).astype("datetime64[s]")  # before 1970 too
    ts[rng.random((n, 2)) < 0.05] = np.datetime64("NaT")
    return ts


def _as_model_input(x: np.ndarray) -> np.ndarray:
    """What scikit-learn sees for the same rows: NaN for a missing text (core.modeling.features.to_model_input)."""
    return np.where(pd.isna(x), np.nan, x) if x.dtype == object else x


def _text_pipeline() -> Pipeline:
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING)),
            (
                "onehot",
                OneHotEncoder(categories=[["a", "b", "c", MISSING]] * 2, handle_unknown="ignore", sparse_output=False),
            ),
        ]
    ).fit(_as_model_input(_texts(1, unseen=False)))


# Each step kind: (the fitted step, rows to transform). Fitted on one draw, checked on another.
STEPS: dict[str, tuple[Callable[[], Any], Callable[[], np.ndarray]]] = {
    "median imputer with indicator": (
        lambda: SimpleImputer(strategy="median", add_indicator=True).fit(_numbers(1)),
        lambda: _numbers(2),
    ),
    "mean imputer": (lambda: SimpleImputer().fit(_numbers(1)[:, :2]), lambda: _numbers(2)[:, :2]),
    "standard scaler": (lambda: StandardScaler().fit(_numbers(1)), lambda: _numbers(2)),
    "scaler without mean": (lambda: StandardScaler(with_mean=False).fit(_numbers(1)), lambda: _numbers(2)),
    "imputer + scaler": (
        lambda: Pipeline([("i", SimpleImputer(add_indicator=True)), ("s", StandardScaler())]).fit(_numbers(1)),
        lambda: _numbers(2),
    ),
    "one-hot, unknowns ignored": (
        lambda: OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(
            np.where(pd.isna(_texts(1, unseen=False)), "a", _texts(1, unseen=False))
        ),
        lambda: np.where(pd.isna(_texts(2)), "b", _texts(2)).astype(object),
    ),
    "text imputer + one-hot (fused)": (_text_pipeline, lambda: _texts(2)),
    "time features": (lambda: TimeFeatures(("hour_of_day", "day_of_week", "month")).fit(_times(1)), lambda: _times(2)),
}


@pytest.mark.parametrize("kind", sorted(STEPS))
@pytest.mark.parametrize("rows", [1, 7, 300])  # a single record, the few-rows branches, the vectorised ones
def test_each_step_kind_matches_scikit_learn(kind: str, rows: int) -> None:
    fit, data = STEPS[kind]
    step = fit()
    x = data()[:rows]
    expected = np.asarray(step.transform(_as_model_input(x)), dtype=np.float64)
    got = compile_step(step)(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_the_compiled_preprocessor_equals_the_column_transformer() -> None:
    contract = get_settings().contract
    X, y = labelled_frame(contract, 800, seed=3)
    pipeline = Pipeline([("features", build_preprocessor(contract)), ("model", LogisticRegression())]).fit(X, y)
    frame = synthetic_frame(contract, 500, seed=9)  # nulls, range ends, unknown categories
    frame.loc[5, "event_time"] = None  # a missing timestamp too
    expected = pipeline[0].transform(to_model_input(frame, contract))
    got = CompiledFeatures.from_pipeline(pipeline, contract).transform(columns_from_frame(frame, contract))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_time_features_are_written_once() -> None:
    """The compiled step is the transformer's own vectorised form, the function its transform calls."""
    tf = TimeFeatures(("hour_of_day", "month")).fit(_times(1))
    compiled = compile_step(tf)
    assert getattr(compiled, "func", None) is encode_times
    x = _times(2)
    np.testing.assert_array_equal(compiled(x), tf.transform(x))
    # transform's own parsing (text, aware timestamps) ends in the same function
    text = pd.DataFrame({"t": ["2026-01-01T23:30", "not a time", None], "u": ["1969-07-20T20:17"] * 3})
    parsed = np.array(
        [["2026-01-01T23:30", "1969-07-20T20:17"], ["NaT", "1969-07-20T20:17"], ["NaT", "1969-07-20T20:17"]],
        dtype="datetime64[s]",
    )
    np.testing.assert_array_equal(TimeFeatures(("hour_of_day", "month")).fit(text).transform(text), compiled(parsed))


class _Doubler(TransformerMixin, BaseEstimator):
    """A transformer of a forker's own, with its numpy form."""

    def fit(self, X: Any, y: Any = None) -> _Doubler:
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        return self.vectorised()(np.asarray(X, dtype=np.float64))

    def vectorised(self) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: 2.0 * x


def test_a_transformer_with_a_vectorised_form_is_compiled_by_it() -> None:
    step = Pipeline([("impute", SimpleImputer()), ("double", _Doubler())]).fit(_numbers(1)[:, :2])
    x = _numbers(2)[:, :2]
    np.testing.assert_array_equal(compile_step(step)(x), step.transform(x))


def test_a_step_without_a_numpy_form_is_named() -> None:
    with pytest.raises(NotCompilableError, match=r"FunctionTransformer.*vectorised\(\)"):
        compile_step(FunctionTransformer(np.log1p).fit(_numbers(1)))


def test_an_unknown_step_inside_the_preprocessor_is_served_by_scikit_learn_with_the_reason_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    contract = get_settings().contract
    X, y = labelled_frame(contract, 400, seed=4)
    pre = build_preprocessor(contract)
    pre.transformers = [
        (name, Pipeline([("step", step), ("log", FunctionTransformer(np.arcsinh))]) if name == "num" else step, cols)
        for name, step, cols in pre.transformers
    ]
    pipeline = Pipeline([("features", pre), ("model", LogisticRegression(max_iter=300))]).fit(X, y)
    with caplog.at_level(logging.WARNING, logger="core.inference.predictor"):
        predictor = Predictor.build(pipeline, contract, threshold=0.5, positive_class=1)
    assert predictor.runtime == "sklearn"
    assert predictor.fallback_reason is not None and "FunctionTransformer" in predictor.fallback_reason
    assert any("FunctionTransformer" in r.getMessage() for r in caplog.records)
    frame = synthetic_frame(contract, 50, seed=8)
    result = predictor.predict(columns_from_frame(frame, contract))
    np.testing.assert_allclose(result.probabilities, pipeline.predict_proba(to_model_input(frame, contract)))


def test_a_column_transformer_that_may_go_sparse_is_refused() -> None:
    contract = get_settings().contract
    X, y = labelled_frame(contract, 200, seed=1)
    pre = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["channel"])], sparse_threshold=0.3)
    pipeline = Pipeline([("features", pre), ("model", LogisticRegression())]).fit(X, y)
    with pytest.raises(NotCompilableError, match="sparse"):
        CompiledFeatures.from_pipeline(pipeline, contract)
