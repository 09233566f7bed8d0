"""Fitting and scoring candidates, free of Prefect and MLflow.

The training flow, the tuning objective and the plain benchmark script all call these functions,
so the benchmark compares orchestration and tracking overhead against exactly the same fits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from core.contract import DatasetContract, label_text
from core.modeling.catalogue import higher_is_better
from core.modeling.families import Params, build_pipeline, get_family
from core.modeling.features import to_model_input
from core.modeling.metrics import choose_threshold, compute_metrics, slice_masks, slice_metrics

SPLITS = ("train", "validation", "test", "holdout")
FoldCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainingData:
    """The processed splits one training run reads, with their provenance."""

    version: str
    location: str
    frames: dict[str, pd.DataFrame]
    info: dict[str, dict[str, Any]]  # per split: rows, fingerprint, start, end

    def __getitem__(self, split: str) -> pd.DataFrame:
        return self.frames[split]

    @property
    def window(self) -> tuple[str, str]:
        """From the first training row to the last test row: the data the model learnt and was chosen on."""
        start = self.info.get("train", {}).get("start", "")
        end = self.info.get("test", {}).get("end", "") or self.info.get("train", {}).get("end", "")
        return str(start), str(end)


def _split_info(manifest: Mapping[str, Any], split: str) -> dict[str, Any]:
    """Rows, fingerprint and time window of one split, from the processed datasets' manifest."""
    raw = manifest.get("splits", {}).get(split, {})
    return {
        "rows": raw.get("rows"),
        "fingerprint": raw.get("fingerprint", ""),
        "start": raw.get("time_min") or "",
        "end": raw.get("time_max") or "",
    }


def load_training_data(settings: Any, splits: tuple[str, ...] = SPLITS) -> TrainingData:
    """The latest processed splits, read through core.data.datasets (the data layer's only read path)."""
    from core.data.datasets import latest_processed

    processed = latest_processed(settings)
    frames = {s: processed.load(s) for s in splits}
    info = {s: _split_info(processed.manifest, s) for s in splits}
    for s in splits:
        if info[s]["rows"] is None:
            info[s]["rows"] = len(frames[s])
    return TrainingData(str(processed.version), str(processed.dir), frames, info)


def labelled_rows(frame: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """The rows with a label, in time order when the contract has a timestamp (time-ordered CV relies on it)."""
    frame = frame[frame[contract.target.name].notna()]
    ts = contract.timestamp_column
    if ts is not None and not frame[ts].is_monotonic_increasing:
        frame = frame.sort_values(ts, kind="stable")
    return frame


def xy(frame: pd.DataFrame, contract: DatasetContract) -> tuple[pd.DataFrame, np.ndarray]:
    """Model input and target (labels as the contract types them) of :func:`labelled_rows`."""
    frame = labelled_rows(frame, contract)
    y = frame[contract.target.name].to_numpy()
    y = y.astype(np.float64) if contract.task == "regression" else _labels(y)
    return to_model_input(frame, contract), y


def _labels(values: np.ndarray) -> np.ndarray:
    """Class labels as one numpy type (a nullable-int or object column becomes plain int or str values)."""
    if values.dtype == object:
        kinds = {type(v) for v in values}
        if kinds <= {int, np.int64}:
            return values.astype(np.int64)
        if kinds <= {bool, np.bool_}:
            return values.astype(bool)
        return values.astype(str).astype(object)
    return values


def model_classes(model: Any) -> list[Any]:
    """The labels of a fitted classifier, in the order of its predict_proba columns, as plain Python values."""
    return [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])]


def positive_index(classes: list[Any], positive: Any) -> int:
    """Where the contract's positive class sits among a model's classes (1 = the second, by convention)."""
    for i, c in enumerate(classes):
        if label_text(c) == label_text(positive):
            return i
    raise ValueError(f"positive class {positive!r} is not one of the model's classes {classes}")


def encode_target(y: Any, contract: DatasetContract, classes: list[Any] | None = None) -> np.ndarray:
    """Labels as the metrics read them: 0/1 (1 = positive) for binary, indices into `classes` for
    multiclass, numbers for regression."""
    y = np.asarray(y)
    if contract.task == "regression":
        return y.astype(np.float64)
    if contract.task == "binary":
        positive = label_text(contract.target.positive_class)
        return np.fromiter((label_text(v) == positive for v in y.tolist()), bool, len(y)).astype(np.int64)
    order = {label_text(c): i for i, c in enumerate(classes if classes is not None else contract.classes)}
    codes = np.fromiter((order.get(label_text(v), -1) for v in y.tolist()), np.int64, len(y))
    if (codes < 0).any():
        unknown = sorted({label_text(v) for v, c in zip(y.tolist(), codes.tolist(), strict=True) if c < 0})
        raise ValueError(f"labels {unknown} are not among the model's classes {classes}")
    return codes


def predict_scores(model: Any, X: pd.DataFrame, contract: DatasetContract) -> np.ndarray:
    """The score a metric needs: P(positive) for binary, the probability matrix (the model's class order)
    for multiclass, the prediction for regression."""
    if contract.task == "regression":
        return np.asarray(model.predict(X), dtype=np.float64)
    proba = np.asarray(model.predict_proba(X), dtype=np.float64)
    if contract.task == "binary":
        return proba[:, positive_index(model_classes(model), contract.target.positive_class)]
    return proba


def cv_splitter(n_folds: int, time_aware: bool, seed: int, *, stratify: bool = False) -> Any:
    """Time-ordered folds (each validates on rows newer than all its training rows, as the model will be
    used; a shuffled split would leak the future into training), else shuffled folds, stratified by class
    for classification so that every fold sees every class."""
    if time_aware:
        return TimeSeriesSplit(n_splits=n_folds)
    if stratify:
        return StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return KFold(n_splits=n_folds, shuffle=True, random_state=seed)


def fold_metrics(model: Any, X: pd.DataFrame, y: np.ndarray, contract: DatasetContract) -> dict[str, float]:
    """Every metric of the task for a fitted model on (X, y); binary thresholds are chosen on the same rows."""
    score = predict_scores(model, X, contract)
    codes = encode_target(y, contract, model_classes(model))
    threshold = choose_threshold(codes, score) if contract.task == "binary" else 0.5
    return compute_metrics(contract.task, codes, score, threshold)


def cross_validate(
    pipeline: Pipeline,
    X: pd.DataFrame,
    y: np.ndarray,
    contract: DatasetContract,
    *,
    n_folds: int,
    time_aware: bool = True,
    seed: int = 42,
    on_fold: FoldCallback | None = None,
) -> dict[str, list[float]]:
    """Per-fold metrics; `on_fold(i, metrics)` runs after each fold (the tuner prunes from there)."""
    scores: dict[str, list[float]] = {}
    splitter = cv_splitter(
        n_folds, time_aware and contract.timestamp_column is not None, seed, stratify=contract.is_classification
    )
    for i, (tr, va) in enumerate(splitter.split(X, y)):
        model = clone(pipeline).fit(X.iloc[tr], y[tr])
        fold = fold_metrics(model, X.iloc[va], y[va], contract)
        for k, v in fold.items():
            scores.setdefault(k, []).append(v)
        if on_fold is not None:
            on_fold(i, fold)
    return scores


@dataclass
class Candidate:
    family: str
    params: Params
    pipeline: Pipeline
    threshold: float
    cv: dict[str, list[float]]
    validation: dict[str, float]
    test: dict[str, float]
    test_slices: dict[str, dict[str, float]] = field(default_factory=dict)
    fit_seconds: float = 0.0
    test_scores: np.ndarray | None = None  # kept for plots, so the test split is not scored twice
    classes: list[Any] = field(default_factory=list)  # the model's labels, in predict_proba's column order

    def cv_mean(self) -> dict[str, float]:
        return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in self.cv.items()}


def fit_candidate(
    contract: DatasetContract,
    data: TrainingData,
    family: str,
    params: Params | None = None,
    *,
    n_folds: int = 3,
    time_aware: bool = True,
    seed: int = 42,
    n_threads: int | None = None,
    min_slice_rows: int = 1,
) -> Candidate:
    """Cross-validate on train, fit on all of train, choose the threshold on validation, score on test."""
    started = time.perf_counter()
    with threadpool_limits(limits=n_threads):
        pipeline = build_pipeline(contract, family, params, seed)
        X, y = xy(data["train"], contract)
        cv = cross_validate(pipeline, X, y, contract, n_folds=n_folds, time_aware=time_aware, seed=seed)
        pipeline.fit(X, y)
        classes = model_classes(pipeline)
        Xv, yv = xy(data["validation"], contract)
        val_score = predict_scores(pipeline, Xv, contract)
        yv = encode_target(yv, contract, classes)
        threshold = choose_threshold(yv, val_score) if contract.task == "binary" else 0.5
        test_frame = labelled_rows(data["test"], contract)
        Xt, yt = xy(test_frame, contract)
        test_score = predict_scores(pipeline, Xt, contract)
        yt = encode_target(yt, contract, classes)
    return Candidate(
        family=family,
        params=build_params(family, params),
        pipeline=pipeline,
        threshold=threshold,
        cv=cv,
        validation=compute_metrics(contract.task, yv, val_score, threshold),
        test=compute_metrics(contract.task, yt, test_score, threshold),
        test_slices=slice_metrics(
            contract.task,
            yt,
            test_score,
            slice_masks(test_frame, contract),
            threshold=threshold,
            min_rows=min_slice_rows,
        ),
        fit_seconds=time.perf_counter() - started,
        test_scores=test_score,
        classes=classes,
    )


def fit_configured(settings: Any, data: TrainingData, family: str, params: Params | None = None) -> Candidate:
    """`fit_candidate` as configured in settings: what the train flow and its plain-script baseline both run."""
    t = settings.training
    return fit_candidate(
        settings.contract,
        data,
        family,
        params,
        n_folds=t.cv_folds,
        time_aware=t.time_aware_cv,
        seed=settings.seed,
        n_threads=t.n_threads,
        min_slice_rows=settings.gate.min_slice_rows,
    )


def refit_pipeline(pipeline: Any, data: TrainingData, contract: DatasetContract) -> Any:
    """A fresh clone of `pipeline` fitted on train + validation + test (everything but the holdout)."""
    frame = pd.concat([data["train"], data["validation"], data["test"]], ignore_index=True)
    X, y = xy(frame, contract)
    return clone(pipeline).fit(X, y)


def build_params(family: str, params: Params | None) -> Params:
    return {**get_family(family).defaults, **(params or {})}


def better(metric: str, a: float, b: float) -> bool:
    """Whether score `a` beats `b` on `metric` (NaN never wins)."""
    if not np.isfinite(a):
        return False
    if not np.isfinite(b):
        return True
    return a > b if higher_is_better(metric) else a < b


def single_row_latency_ms(model: Any, row: pd.DataFrame, repeats: int = 30) -> float:
    """Median time of one single-row predict on one thread (how a serving worker runs it).

    Counted in the thread's CPU time, not wall time: the gate judges what the model costs, and on a
    shared machine (CI, a busy training host) wall time also counts the other processes' turns on the
    CPU: 54 ms measured for a 5 ms logistic pipeline while the test suite and benchmarks ran beside it."""
    method = model.predict_proba if hasattr(model, "predict_proba") else model.predict
    times = []
    with threadpool_limits(limits=1):
        method(row)  # warm-up: first-call allocations are not the steady state
        for _ in range(repeats):
            t0 = time.thread_time()
            method(row)
            times.append((time.thread_time() - t0) * 1000)
    return float(np.median(times))
