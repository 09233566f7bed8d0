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
from sklearn.model_selection import KFold, TimeSeriesSplit
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from core.contract import DatasetContract
from core.modeling.families import Params, build_pipeline, get_family
from core.modeling.features import to_model_input
from core.modeling.metrics import choose_threshold, compute_metrics, higher_is_better, slice_masks, slice_metrics

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


def xy(frame: pd.DataFrame, contract: DatasetContract) -> tuple[pd.DataFrame, np.ndarray]:
    """Model input and target, rows in time order and rows without a label left out."""
    target = contract.target.name
    frame = frame[frame[target].notna()]
    if not frame[contract.timestamp_column].is_monotonic_increasing:
        frame = frame.sort_values(contract.timestamp_column, kind="stable")
    y = frame[target].to_numpy()
    y = y.astype(np.float64) if contract.task == "regression" else y.astype(np.int64)
    return to_model_input(frame, contract), y


def predict_scores(model: Any, X: pd.DataFrame, contract: DatasetContract) -> np.ndarray:
    """The score a metric needs: P(positive) for binary, the probability matrix for multiclass."""
    if contract.task == "regression":
        return np.asarray(model.predict(X), dtype=np.float64)
    proba = np.asarray(model.predict_proba(X), dtype=np.float64)
    if contract.task == "binary":
        classes = list(model.classes_)
        return proba[:, classes.index(_positive_label(contract, classes))]
    return proba


def _positive_label(contract: DatasetContract, classes: list[Any]) -> Any:
    positive = contract.target.positive_class
    for c in classes:
        if c == positive or str(c) == str(positive):
            return c
    return classes[-1]


def cv_splitter(n_folds: int, time_aware: bool, seed: int) -> TimeSeriesSplit | KFold:
    # Time-aware by default: each fold validates on rows newer than all its training rows, as
    # the model will be used; a shuffled KFold would leak the future into training.
    return TimeSeriesSplit(n_splits=n_folds) if time_aware else KFold(n_splits=n_folds, shuffle=True, random_state=seed)


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
    for i, (tr, va) in enumerate(cv_splitter(n_folds, time_aware, seed).split(X)):
        model = clone(pipeline).fit(X.iloc[tr], y[tr])
        score = predict_scores(model, X.iloc[va], contract)
        threshold = choose_threshold(y[va], score) if contract.task == "binary" else 0.5
        fold = compute_metrics(contract.task, y[va], score, threshold)
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
        Xv, yv = xy(data["validation"], contract)
        val_score = predict_scores(pipeline, Xv, contract)
        threshold = choose_threshold(yv, val_score) if contract.task == "binary" else 0.5
        Xt, yt = xy(data["test"], contract)
        test_score = predict_scores(pipeline, Xt, contract)
    test_frame = data["test"]
    test_frame = test_frame[test_frame[contract.target.name].notna()].sort_values(
        contract.timestamp_column, kind="stable"
    )
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
    """Median wall time of one single-row predict, one thread (how a serving worker runs it)."""
    method = model.predict_proba if hasattr(model, "predict_proba") else model.predict
    times = []
    with threadpool_limits(limits=1):
        method(row)  # warm-up: first-call allocations are not the steady state
        for _ in range(repeats):
            t0 = time.perf_counter()
            method(row)
            times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))
