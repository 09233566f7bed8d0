"""The fast predict path.

A model arrives as a scikit-learn Pipeline (the contract's ColumnTransformer + an estimator). Calling
it on a one-row DataFrame costs milliseconds, almost all of it pandas and input validation, not
arithmetic. So at load the fitted preprocessor is compiled into plain numpy operations that read the
fitted parameters (imputer statistics, scaler moments, one-hot categories), and the estimator runs
either on ONNX Runtime (converted with skl2onnx) or as scikit-learn on a numpy matrix. Each compiled
path serves only after it matches the original Pipeline on a sample of contract rows; otherwise the
next one is tried, down to the Pipeline itself. `Predictor.runtime` says which path serves.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from core.contract import DatasetContract
from core.modeling.features import TimeFeatures, to_model_input
from serving.sample import synthetic_frame

log = logging.getLogger(__name__)

Runtime = Literal["onnx", "numpy", "sklearn"]
# Per-column arrays: float64 (NaN = null) for numbers, object (None = null) for categories and strings,
# datetime64[s] (NaT = null) for timestamps. Built once per request, shared by every path.
Columns = dict[str, np.ndarray]
Step = Callable[[np.ndarray], np.ndarray]


class NotCompilableError(Exception):
    """The Pipeline holds a step the numpy compiler does not know; serve it with scikit-learn."""


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


def frame_from_columns(columns: Columns) -> pd.DataFrame:
    return pd.DataFrame({k: (v.astype("datetime64[ns]") if v.dtype.kind == "M" else v) for k, v in columns.items()})


def _naive_utc(v: Any) -> Any:
    # The contract's timestamps are UTC; an aware value is converted so that every path sees one clock.
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC).replace(tzinfo=None)
    return v


# ---- compiling the preprocessor -----------------------------------------------------------------


def _compile_step(step: Any) -> Step:

    if isinstance(step, Pipeline):
        parts = [s for _, s in step.steps if s not in (None, "passthrough")]
        if len(parts) == 2 and _is_text_imputer(parts[0]) and isinstance(parts[1], OneHotEncoder):
            return _compile_onehot(parts[1], fill=list(parts[0].statistics_))
        steps = [_compile_step(s) for s in parts]

        def chain(x: np.ndarray) -> np.ndarray:
            for s in steps:
                x = s(x)
            return x

        return chain
    if step == "passthrough":
        return lambda x: np.asarray(x, dtype=np.float64)
    if isinstance(step, SimpleImputer):
        return _compile_imputer(step)
    if isinstance(step, StandardScaler):
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None

        def scaler(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x, dtype=np.float64)
            if mean is not None:
                x = x - mean
            if scale is not None:
                x = x / scale
            return x

        return scaler
    if isinstance(step, OneHotEncoder):
        return _compile_onehot(step)
    if isinstance(step, TimeFeatures):
        return _compile_time_features(tuple(step.features))
    raise NotCompilableError(f"no numpy form for {type(step).__name__}")


def _is_text_imputer(step: Any) -> bool:
    return isinstance(step, SimpleImputer) and not step.add_indicator and np.asarray(step.statistics_).dtype == object


_FEW_ROWS = 64


def _compile_onehot(enc: OneHotEncoder, fill: list[Any] | None = None) -> Step:
    """One-hot by hash lookup (pandas' Index), not by comparing every value with every category.

    With `fill` (a text SimpleImputer's per-column statistics in front of the encoder), a missing
    value (None or NaN) is looked up as its column's fill value, so the imputer costs no pass of its own.
    """
    if enc.drop_idx_ is not None or getattr(enc, "_infrequent_enabled", False):
        raise NotCompilableError("OneHotEncoder with drop or infrequent categories")
    if enc.handle_unknown not in ("ignore", "infrequent_if_exist"):
        raise NotCompilableError(f"OneHotEncoder(handle_unknown={enc.handle_unknown!r})")
    indexes = []
    lookups: list[tuple[dict[Any, int], int]] = []
    for j, categories in enumerate(enc.categories_):
        values = list(categories)
        codes = list(range(len(values)))
        if fill is not None:
            # None and NaN hash apart in an Index: both map to the fill value's code (-1: not a category).
            target = values.index(fill[j]) if fill[j] in values else -1
            values += [None, np.nan]
            codes += [target, target]
        indexes.append((pd.Index(np.asarray(values, dtype=object)), np.asarray([*codes, -1])))
        is_nan = [isinstance(v, float) and math.isnan(v) for v in values]
        nan_code = codes[is_nan.index(True)] if any(is_nan) else -1
        lookups.append(({v: c for v, c, nan in zip(values, codes, is_nan, strict=True) if not nan}, nan_code))
    offsets = np.cumsum([0, *(len(c) for c in enc.categories_[:-1])])
    width = sum(len(c) for c in enc.categories_)

    def onehot(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), width), dtype=np.float64)
        if len(x) <= _FEW_ROWS:  # a few rows: plain dict lookups beat an Index lookup's fixed cost
            for j, (lookup, nan_code) in enumerate(lookups):
                for i, v in enumerate(x[:, j].tolist()):
                    code = lookup.get(v, -1) if v == v else nan_code  # noqa: PLR0124 - v != v: NaN
                    if code >= 0:
                        out[i, offsets[j] + code] = 1.0
            return out
        rows = np.arange(len(x))
        for j, (index, remap) in enumerate(indexes):
            # get_indexer's -1 (not found) picks remap[-1] = -1. (The stubs want an Index; arrays work.)
            codes = remap[index.get_indexer(x[:, j])]  # type: ignore[arg-type]
            known = codes >= 0  # unknown categories stay all-zero (handle_unknown="ignore")
            out[rows[known], offsets[j] + codes[known]] = 1.0
        return out

    return onehot


def _compile_imputer(imp: Any) -> Step:
    stats = np.asarray(imp.statistics_)
    if imp.keep_empty_features is False and stats.dtype.kind == "f" and np.isnan(stats).any():
        raise NotCompilableError("SimpleImputer dropped an all-empty column")
    indicator = imp.indicator_.features_ if imp.add_indicator else None
    if indicator is not None and imp.indicator_.features != "missing-only":
        raise NotCompilableError("MissingIndicator(features='all')")
    numeric = stats.dtype.kind in "fiu"

    def impute(x: np.ndarray) -> np.ndarray:
        if numeric:
            x = np.asarray(x, dtype=np.float64)
            missing = np.isnan(x)
            out = np.where(missing, stats[None, :], x)
        else:
            missing = pd.isna(x)
            out = np.where(missing, stats[None, :], x)
        if indicator is not None:
            out = np.concatenate([out, missing[:, indicator].astype(out.dtype)], axis=1)
        return out

    return impute


_PERIODS = {"hour_of_day": 24.0, "day_of_week": 7.0, "month": 12.0}


def _compile_time_features(features: tuple[str, ...]) -> Step:
    def time_features(x: np.ndarray) -> np.ndarray:
        ts = np.asarray(x[:, 0], dtype="datetime64[s]")
        nat = np.isnat(ts)
        secs = ts.astype(np.int64)
        days = np.floor_divide(secs, 86_400)
        sod = secs - days * 86_400
        parts = {
            # as TimeFeatures: hour + minute / 60 (seconds ignored), Monday = 0 (1970-01-01 was a Thursday)
            "hour_of_day": (sod // 3600) + (sod % 3600 // 60) / 60.0,
            "day_of_week": ((days + 3) % 7).astype(np.float64),
            "month": (ts.astype("datetime64[M]").astype(np.int64) % 12).astype(np.float64),
        }
        out = np.empty((len(ts), 2 * len(features)), dtype=np.float64)
        for i, name in enumerate(features):
            angle = 2 * np.pi * parts[name] / _PERIODS[name]
            out[:, 2 * i] = np.where(nat, 0.0, np.sin(angle))
            out[:, 2 * i + 1] = np.where(nat, 0.0, np.cos(angle))
        return out

    return time_features


RowStep = Callable[[list[Any]], list[Any]]


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _compile_row_step(step: Any) -> RowStep:
    """The same fitted step for one row, as plain Python: for a single record, numpy's per-call
    overhead (dozens of microseconds a call) costs more than the arithmetic."""
    if isinstance(step, Pipeline):
        steps = [_compile_row_step(s) for _, s in step.steps if s not in (None, "passthrough")]

        def chain(xs: list[Any]) -> list[Any]:
            for s in steps:
                xs = s(xs)
            return xs

        return chain
    if step == "passthrough":
        return lambda xs: [float(x) for x in xs]
    if isinstance(step, SimpleImputer):
        stats = np.asarray(step.statistics_).tolist()
        indicator = step.indicator_.features_.tolist() if step.add_indicator else []
        return lambda xs: (
            [stats[i] if _is_missing(x) else x for i, x in enumerate(xs)]
            + [1.0 if _is_missing(xs[j]) else 0.0 for j in indicator]
        )
    if isinstance(step, StandardScaler):
        mean = step.mean_.tolist() if step.with_mean else None
        scale = step.scale_.tolist() if step.with_std else None
        return lambda xs: [
            (float(x) - (mean[i] if mean else 0.0)) / (scale[i] if scale else 1.0) for i, x in enumerate(xs)
        ]
    if isinstance(step, OneHotEncoder):
        cats = [list(c) for c in step.categories_]
        return lambda xs: [1.0 if x == c else 0.0 for x, cs in zip(xs, cats, strict=True) for c in cs]
    if isinstance(step, TimeFeatures):
        features = tuple(step.features)

        def time_features(xs: list[Any]) -> list[Any]:
            ts = xs[0]
            if _is_missing(ts):
                return [0.0] * (2 * len(features))
            parts = {"hour_of_day": ts.hour + ts.minute / 60.0, "day_of_week": ts.weekday(), "month": ts.month - 1}
            out = []
            for name in features:
                angle = 2 * math.pi * parts[name] / _PERIODS[name]
                out += [math.sin(angle), math.cos(angle)]
            return out

        return time_features
    raise NotCompilableError(f"no row form for {type(step).__name__}")


@dataclass(frozen=True)
class CompiledFeatures:
    """The fitted ColumnTransformer as a list of (input columns, numpy function) blocks."""

    blocks: tuple[tuple[tuple[str, ...], str, Step], ...]
    row_blocks: tuple[tuple[tuple[str, ...], RowStep], ...] = ()

    @classmethod
    def from_pipeline(cls, pipeline: Any, contract: DatasetContract) -> CompiledFeatures:
        pre = pipeline[:-1]
        if len(pre) != 1 or not isinstance(pre[0], ColumnTransformer):
            raise NotCompilableError("expected the Pipeline to be one ColumnTransformer + an estimator")
        ct = pre[0]
        if ct.sparse_threshold and ct.sparse_threshold > 0:
            raise NotCompilableError("ColumnTransformer may return a sparse matrix")
        blocks = []
        row_blocks = []
        for name, step, cols in ct.transformers_:
            if step == "drop" or len(cols) == 0:
                continue
            if name == "remainder" and ct.remainder == "drop":
                continue
            names = tuple(ct.feature_names_in_[c] if isinstance(c, int | np.integer) else c for c in cols)
            kinds = {contract.column(c).type for c in names}
            kind = (
                "datetime" if kinds == {"datetime"} else ("numeric" if kinds <= {"float", "int", "bool"} else "object")
            )
            blocks.append((names, kind, _compile_step(step)))
            row_blocks.append((names, _compile_row_step(step)))
        return cls(tuple(blocks), tuple(row_blocks))

    def transform(self, columns: Columns) -> np.ndarray:
        parts = []
        for names, kind, fn in self.blocks:
            if kind == "numeric":
                x = np.column_stack([columns[c] for c in names]).astype(np.float64, copy=False)
            elif kind == "datetime":
                x = np.column_stack([columns[c] for c in names])
            else:
                x = np.column_stack([columns[c] for c in names]).astype(object, copy=False)
            parts.append(fn(x))
        return np.concatenate(parts, axis=1)

    def transform_record(self, record: Mapping[str, Any]) -> np.ndarray:
        """One validated record (plain Python values, naive-UTC datetimes) to a (1, n_features) matrix."""
        out: list[float] = []
        for names, fn in self.row_blocks:
            out += fn([record.get(c) for c in names])
        return np.array([out], dtype=np.float64)


# ---- the predictor ------------------------------------------------------------------------------


@dataclass
class Prediction:
    """Vectorised output for n rows."""

    labels: list[Any]
    probabilities: np.ndarray | None  # (n, n_classes) for classifiers
    classes: list[Any] = field(default_factory=list)


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
    _onnx: Any = None
    _onnx_input: str = ""
    _onnx_prob_output: str = ""
    _row_path: bool = False
    _datetime_cols: tuple[str, ...] = ()

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
        """The fastest path that matches the Pipeline on `parity_rows` contract rows."""
        p = cls(pipeline, contract, threshold=threshold, positive_class=positive_class)
        sample = columns_from_frame(synthetic_frame(contract, parity_rows, seed=7), contract)
        expected = p._sklearn_scores(sample)
        try:
            p._features = CompiledFeatures.from_pipeline(pipeline, contract)
        except NotCompilableError as exc:
            p.fallback_reason = f"numpy: {exc}"
            log.warning("serving the scikit-learn Pipeline: %s", exc)
            return p
        p.runtime = "numpy"
        diff = _max_diff(p._scores(sample), expected)
        if diff > tolerance:
            p.runtime, p._features = "sklearn", None
            p.fallback_reason = f"numpy: differs from scikit-learn by {diff:.3g} > {tolerance}"
            log.warning("serving the scikit-learn Pipeline: %s", p.fallback_reason)
            return p
        p.parity_max_abs_diff = diff
        p._enable_row_path(parity_rows, tolerance)
        return p.with_onnx(threads=threads, parity_rows=parity_rows, tolerance=tolerance) if use_onnx else p

    def _enable_row_path(self, parity_rows: int, tolerance: float) -> None:
        """Use the plain-Python single-record path only if it gives the numpy path's features."""
        assert self._features is not None
        self._datetime_cols = tuple(c.name for c in self.contract.columns if c.type == "datetime")
        frame = synthetic_frame(self.contract, min(parity_rows, 128), seed=7)
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")  # type: ignore[call-overload]
        try:
            rows = np.vstack([self._features.transform_record(_utc_record(r, self._datetime_cols)) for r in records])
        except Exception as exc:  # a step without a row form: single records take the numpy path
            log.info("no single-record path: %s", exc)
            return
        expected = self._features.transform(columns_from_frame(frame, self.contract))
        self._row_path = rows.shape == expected.shape and _max_diff(rows, expected) <= tolerance

    def with_onnx(self, *, threads: int = 1, parity_rows: int = 512, tolerance: float = 1e-4) -> Predictor:
        """A copy whose estimator runs on ONNX Runtime, or `self` (reason recorded) if conversion or parity fails.

        Separate from `build` so that a service can start serving on the numpy path and upgrade later:
        converting costs seconds (mostly importing skl2onnx) that need not delay readiness.
        """
        if self.runtime != "numpy":
            return self
        sample = columns_from_frame(synthetic_frame(self.contract, parity_rows, seed=7), self.contract)
        expected = self._sklearn_scores(sample)
        candidate = replace(self, runtime="numpy")
        try:
            candidate._convert_onnx(sample, threads)
            candidate.runtime = "onnx"
            diff = _max_diff(candidate._scores(sample), expected)
        except Exception as exc:  # any conversion or runtime failure: keep the numpy path
            self.fallback_reason = f"onnx: {type(exc).__name__}: {str(exc)[:200]}"
            log.warning("not using ONNX Runtime: %s", self.fallback_reason)
            return self
        if diff > tolerance:
            self.fallback_reason = f"onnx: differs from scikit-learn by {diff:.3g} > {tolerance}"
            log.warning("not using ONNX Runtime: %s", self.fallback_reason)
            return self
        candidate.parity_max_abs_diff = diff
        candidate.fallback_reason = None
        candidate.warm()
        return candidate

    def _convert_onnx(self, sample: Columns, threads: int) -> None:
        # Imported only when a model is converted: skl2onnx alone takes ~2 s to import.
        import onnxruntime as ort
        from skl2onnx import to_onnx

        assert self._features is not None
        estimator = self.pipeline[-1]
        X = self._features.transform(sample).astype(np.float32)
        options = {id(estimator): {"zipmap": False}} if self.is_classifier else None
        onx = to_onnx(estimator, X[:1], options=options, target_opset=None)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(onx.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self._onnx = session
        self._onnx_input = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()]
        self._onnx_prob_output = outputs[-1] if self.is_classifier else outputs[0]

    # Scores: positive-class probability (binary), all probabilities (multiclass) or the value (regression).
    def _sklearn_scores(self, columns: Columns) -> np.ndarray:
        X = to_model_input(frame_from_columns(columns), self.contract)
        if self.is_classifier:
            return np.asarray(self.pipeline.predict_proba(X), dtype=np.float64)
        return np.asarray(self.pipeline.predict(X), dtype=np.float64).reshape(-1, 1)

    def _scores(self, columns: Columns) -> np.ndarray:
        if self.runtime == "sklearn" or self._features is None:
            return self._sklearn_scores(columns)
        return self._estimate(self._features.transform(columns))

    def _estimate(self, X: np.ndarray) -> np.ndarray:
        if self.runtime == "onnx":
            out = self._onnx.run([self._onnx_prob_output], {self._onnx_input: X.astype(np.float32)})[0]
            return np.asarray(out, dtype=np.float64).reshape(len(X), -1)
        estimator = self.pipeline[-1]
        if self.is_classifier:
            return np.asarray(estimator.predict_proba(X), dtype=np.float64)
        return np.asarray(estimator.predict(X), dtype=np.float64).reshape(-1, 1)

    def predict_record(self, record: Mapping[str, Any]) -> Prediction:
        """One record through the plain-Python feature path (checked against the numpy one at build)."""
        if not self._row_path or self._features is None:
            return self.predict(columns_from_records([record], self.contract))
        return self._decide(self._estimate(self._features.transform_record(_utc_record(record, self._datetime_cols))))

    def predict(self, columns: Columns) -> Prediction:
        return self._decide(self._scores(columns))

    def _decide(self, scores: np.ndarray) -> Prediction:
        if not self.is_classifier:
            return Prediction(labels=scores[:, 0].tolist(), probabilities=None)
        classes = self.classes
        if len(classes) == 2 and self.threshold is not None:
            pos = classes.index(self.positive_class) if self.positive_class in classes else 1
            neg = 1 - pos
            picks = np.where(scores[:, pos] >= self.threshold, pos, neg)
        else:
            picks = np.argmax(scores, axis=1)
        return Prediction(labels=[classes[i] for i in picks.tolist()], probabilities=scores, classes=classes)

    def warm(self) -> None:
        """One prediction on every path a request can take, so the first caller pays no lazy set-up."""
        self.predict(columns_from_frame(synthetic_frame(self.contract, 8, seed=3), self.contract))


def _utc_record(record: Mapping[str, Any], datetime_cols: tuple[str, ...]) -> Mapping[str, Any]:
    if not any(isinstance(record.get(c), datetime) and record[c].tzinfo is not None for c in datetime_cols):
        return record
    return {**record, **{c: _naive_utc(record.get(c)) for c in datetime_cols}}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
