"""The fast predict path.

A model arrives as a scikit-learn Pipeline (the contract's ColumnTransformer + an estimator). Calling
it on a one-row DataFrame costs milliseconds, almost all of it pandas and input validation, not
arithmetic. So at load the fitted preprocessor is compiled into numpy functions
(core.modeling.compiled: scikit-learn's steps from their fitted parameters, the project's own
transformers by their own vectorised form), and the estimator runs either on ONNX Runtime (the
recipes are in core.inference.onnx) or as scikit-learn on a numpy matrix. Each compiled path serves only
after it matches the original Pipeline on a sample of contract rows; otherwise the next one is tried,
down to the Pipeline itself, and the reason is logged and kept in `fallback_reason`.
`Predictor.runtime` says which path serves.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.contract import DatasetContract, label_text
from core.inference.sample import synthetic_frame
from core.modeling.compiled import Columns, CompiledFeatures, NotCompilableError
from core.modeling.explain import Explanation, ModelExplainer
from core.modeling.features import to_model_input

if TYPE_CHECKING:
    from core.inference.onnx import OnnxEstimator

log = logging.getLogger(__name__)

Runtime = Literal["onnx", "numpy", "sklearn"]

# core.modeling.features.TimeFeatures is fitted on a bare array but called with a DataFrame; scikit-learn
# warns on every call of the Pipeline fallback path. The values are right; the warning is noise here.
warnings.filterwarnings("ignore", message="X has feature names, but TimeFeatures")

# ---- building column arrays ---------------------------------------------------------------------


def columns_from_records(records: Sequence[Mapping[str, Any]], contract: DatasetContract) -> Columns:
    """Column arrays from validated records (dicts of plain Python values)."""
    out: Columns = {}
    for name in contract.input_columns:
        kind = contract.column(name).type
        values = [r.get(name) for r in records]
        if kind in ("float", "int", "bool"):
            out[name] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        elif kind == "datetime":
            out[name] = np.array([_naive_utc(v) for v in values], dtype="datetime64[s]")
        else:
            out[name] = np.array(values, dtype=object)
    return out


def columns_from_frame(frame: pd.DataFrame, contract: DatasetContract) -> Columns:
    """Column arrays from a frame that already passed the contract checks."""
    out: Columns = {}
    for name in contract.input_columns:
        kind = contract.column(name).type
        s = frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index, dtype=object)
        if kind in ("float", "int", "bool"):
            out[name] = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        elif kind == "datetime":
            ts = pd.to_datetime(s, errors="coerce", utc=True).dt.tz_localize(None)
            out[name] = ts.to_numpy(dtype="datetime64[s]")
        else:
            arr = s.to_numpy(dtype=object)
            out[name] = np.where(pd.isna(arr), None, arr)  # type: ignore[call-overload]
    return out


def columns_from_typed(typed: Mapping[str, pa.Array], contract: DatasetContract) -> Columns:
    """Column arrays from the contract checker's typed Arrow arrays (core.data.rules.CheckResult.typed):
    the API's batch upload and batch scoring both predict from these."""
    out: Columns = {}
    for name, array in typed.items():
        kind = contract.column(name).type
        if kind in ("float", "int", "bool"):
            out[name] = np.asarray(array.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        elif kind == "datetime":
            out[name] = np.asarray(array.to_numpy(zero_copy_only=False), dtype="datetime64[ns]").astype("datetime64[s]")
        else:
            # One Python str per distinct value, not per row (a category column repeats a few values).
            encoded = pc.dictionary_encode(array)
            codes = encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)
            out[name] = np.array([*encoded.dictionary.to_pylist(), None], dtype=object)[codes]
    return out


def frame_from_columns(columns: Columns) -> pd.DataFrame:
    return pd.DataFrame({k: (v.astype("datetime64[ns]") if v.dtype.kind == "M" else v) for k, v in columns.items()})


def _naive_utc(v: Any) -> Any:
    # The contract's timestamps are UTC; an aware value is converted so that every path sees one clock.
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC).replace(tzinfo=None)
    return v


# ---- the predictor ------------------------------------------------------------------------------


@dataclass
class Prediction:
    """Vectorised output for n rows."""

    labels: list[Any]
    probabilities: np.ndarray | None  # (n, n_classes) for classifiers
    classes: list[Any] = field(default_factory=list)
    picks: np.ndarray | None = None  # classifiers: each row's label as its index in `classes`


@dataclass
class Predictor:
    pipeline: Any
    contract: DatasetContract
    threshold: float | None = None
    positive_class: Any = None
    runtime: Runtime = "sklearn"
    parity_max_abs_diff: float | None = None
    fallback_reason: str | None = None
    _features: CompiledFeatures | None = None
    _onnx: OnnxEstimator | None = None
    _explainer: ModelExplainer | None = None

    @property
    def is_classifier(self) -> bool:
        return hasattr(self.pipeline[-1], "predict_proba")

    @property
    def classes(self) -> list[Any]:
        return [_py(c) for c in getattr(self.pipeline[-1], "classes_", [])]

    @classmethod
    def build(
        cls,
        pipeline: Any,
        contract: DatasetContract,
        *,
        threshold: float | None = None,
        positive_class: Any = None,
        use_onnx: bool = True,
        threads: int = 1,
        parity_rows: int = 512,
        tolerance: float = 1e-4,
    ) -> Predictor:
        """The fastest path that matches the Pipeline on `parity_rows` contract rows (see `_parity`)."""
        p = cls(pipeline, contract, threshold=threshold, positive_class=positive_class)
        # Cheap (no TreeSHAP yet) and shared by every copy of this predictor, the ONNX one included.
        p._explainer = ModelExplainer(pipeline, contract, positive_class=positive_class)
        sample = columns_from_frame(synthetic_frame(contract, parity_rows, seed=7), contract)
        expected = p._sklearn_scores(sample)
        try:
            p._features = CompiledFeatures.from_pipeline(pipeline, contract)
        except NotCompilableError as exc:
            p.fallback_reason = f"numpy: {exc}"
            log.warning("serving the scikit-learn Pipeline: %s", exc)
            return p
        p.runtime = "numpy"
        diff, allowed = p._parity(p._scores(sample), expected, tolerance)
        if diff > allowed:
            p.runtime, p._features = "sklearn", None
            p.fallback_reason = f"numpy: differs from scikit-learn by {diff:.3g} > {allowed:.3g}"
            log.warning("serving the scikit-learn Pipeline: %s", p.fallback_reason)
            return p
        p.parity_max_abs_diff = diff
        return p.with_onnx(threads=threads, parity_rows=parity_rows, tolerance=tolerance) if use_onnx else p

    def with_onnx(self, *, threads: int = 1, parity_rows: int = 512, tolerance: float = 1e-4) -> Predictor:
        """A copy whose estimator runs on ONNX Runtime, or `self` (reason recorded) if conversion or parity fails.

        Separate from `build` so that a service can start serving on the numpy path and upgrade later:
        converting costs seconds (mostly importing skl2onnx) that need not delay readiness.
        """
        if self.runtime != "numpy" or self._features is None:
            return self
        sample = columns_from_frame(synthetic_frame(self.contract, parity_rows, seed=7), self.contract)
        expected = self._sklearn_scores(sample)
        try:
            # Imported here, not at the top: skl2onnx alone takes seconds to import.
            from core.inference.onnx import convert

            n_features = self._features.transform(sample).shape[1]
            candidate = replace(self, runtime="onnx", _onnx=convert(self.pipeline[-1], n_features, threads=threads))
            diff, allowed = self._parity(candidate._scores(sample), expected, tolerance)
        except Exception as exc:  # any conversion or runtime failure: keep the numpy path
            self.fallback_reason = f"onnx: {type(exc).__name__}: {str(exc)[:200]}"
            log.warning("not using ONNX Runtime: %s", self.fallback_reason)
            return self
        if diff > allowed:
            self.fallback_reason = f"onnx: differs from scikit-learn by {diff:.3g} > {allowed:.3g}"
            log.warning("not using ONNX Runtime: %s", self.fallback_reason)
            return self
        candidate.parity_max_abs_diff = diff
        candidate.fallback_reason = None
        candidate.warm()
        return candidate

    def _parity(self, got: np.ndarray, expected: np.ndarray, tolerance: float) -> tuple[float, float]:
        """(largest absolute difference, largest allowed).

        Probabilities are compared with `tolerance` itself; a regressor's values with `tolerance` times
        the largest expected |value| (at least 1): a float32 estimator is ~1e-7 off relative to the
        target's scale, which for prices in the thousands is more than 1e-4 absolute.
        """
        diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
        if self.is_classifier or not expected.size:
            return diff, tolerance
        return diff, tolerance * max(1.0, float(np.max(np.abs(expected))))

    # Scores: positive-class probability (binary), all probabilities (multiclass) or the value (regression).
    def _sklearn_scores(self, columns: Columns) -> np.ndarray:
        X = to_model_input(frame_from_columns(columns), self.contract)
        if self.is_classifier:
            return np.asarray(self.pipeline.predict_proba(X), dtype=np.float64)
        return np.asarray(self.pipeline.predict(X), dtype=np.float64).reshape(-1, 1)

    def _scores(self, columns: Columns) -> np.ndarray:
        if self.runtime == "sklearn" or self._features is None:
            return self._sklearn_scores(columns)
        X = self._features.transform(columns)
        if self.runtime == "onnx" and self._onnx is not None:
            return self._onnx.run(X)
        estimator = self.pipeline[-1]
        if self.is_classifier:
            return np.asarray(estimator.predict_proba(X), dtype=np.float64)
        return np.asarray(estimator.predict(X), dtype=np.float64).reshape(-1, 1)

    def predict(self, columns: Columns) -> Prediction:
        return self._decide(self._scores(columns))

    @property
    def explainer(self) -> ModelExplainer:
        """Reason codes for this model (core.modeling.explain), built on first use and then kept."""
        if self._explainer is None:
            self._explainer = ModelExplainer(self.pipeline, self.contract, positive_class=self.positive_class)
        return self._explainer

    def feature_matrix(self, columns: Columns) -> np.ndarray:
        """The preprocessed rows the estimator sees: the compiled path when it serves, else the Pipeline's."""
        if self._features is not None and self.runtime != "sklearn":
            return self._features.transform(columns)
        X = to_model_input(frame_from_columns(columns), self.contract)
        return np.asarray(self.pipeline[:-1].transform(X), dtype=np.float64)

    def explain(self, columns: Columns, result: Prediction) -> Explanation:
        """Why each row got its score: the positive class's (binary), the predicted class's (multiclass)."""
        explainer = self.explainer
        if not explainer.available:
            return explainer.explain(np.zeros((len(result.labels), 0)))
        return explainer.explain(self.feature_matrix(columns), result.labels if self.is_classifier else None)

    def _decide(self, scores: np.ndarray) -> Prediction:
        if not self.is_classifier:
            return Prediction(labels=scores[:, 0].tolist(), probabilities=None)
        classes = self.classes
        if len(classes) == 2 and self.threshold is not None:
            texts = [label_text(c) for c in classes]
            positive = label_text(self.positive_class)
            pos = texts.index(positive) if positive in texts else 1
            neg = 1 - pos
            picks = np.where(scores[:, pos] >= self.threshold, pos, neg)
        else:
            picks = np.argmax(scores, axis=1)
        return Prediction(
            labels=[classes[i] for i in picks.tolist()], probabilities=scores, classes=classes, picks=picks
        )

    def warm(self) -> None:
        """One prediction on every path a request can take, so the first caller pays no lazy set-up."""
        self.predict(columns_from_frame(synthetic_frame(self.contract, 8, seed=3), self.contract))


def predictor_for(
    pipeline: Any,
    metadata: Mapping[str, Any],
    contract: DatasetContract,
    *,
    tags: Mapping[str, str] | None = None,
    use_onnx: bool = False,
    threads: int = 1,
    parity_rows: int = 512,
    tolerance: float = 1e-4,
) -> Predictor:
    """The predictor of a registered version: its Pipeline with the threshold and positive class its
    metadata (or, for older versions, its tags) records. The API and batch scoring both build it here,
    so a row scores the same whichever path it takes."""
    threshold = metadata.get("threshold", (tags or {}).get("threshold"))
    positive = metadata.get("positive_class", contract.target.positive_class)
    return Predictor.build(
        pipeline,
        contract,
        threshold=float(threshold) if threshold is not None else (0.5 if contract.task == "binary" else None),
        positive_class=positive,
        use_onnx=use_onnx,
        threads=threads,
        parity_rows=parity_rows,
        tolerance=tolerance,
    )


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
