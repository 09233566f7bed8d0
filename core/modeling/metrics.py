"""Metric computations for every metric of the catalogue, per slice, the decision threshold, and fast
weighted ranking metrics for the bootstrap.

Inputs are encoded once by the caller (core.modeling.training.encode_target): ``y`` is 0/1 (1 = the
contract's positive class) for binary, class indices into the model's class order for multiclass, numbers
for regression. Scores are what a model outputs for the metric: P(positive) for binary, the (n, k)
probability matrix for multiclass, the prediction for regression. :func:`metric_value` is the only
implementation of each metric; :func:`compute_metrics` (every metric of the task) and the gate's
bootstrap (with row weights) both call it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    precision_recall_curve,
    r2_score,
    roc_auc_score,
)

from core.contract import DatasetContract, Task
from core.modeling.catalogue import metric_names, spec


def check_primary_metric(task: Task, metric: str) -> None:
    """Refuse a metric the task does not have (e.g. pr_auc for a regression contract)."""
    spec(task, metric)


def hard_labels(task: Task, score: np.ndarray, threshold: float) -> np.ndarray:
    """The labels a model's scores decide: P(positive) >= threshold (binary), the likeliest class (multiclass)."""
    if task == "binary":
        return (score >= threshold).astype(np.int64)
    return np.asarray(score).argmax(axis=1)


def metric_value(
    task: Task,
    metric: str,
    y: Any,
    score: Any,
    *,
    threshold: float = 0.5,
    weights: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
) -> float:
    """One metric of the catalogue; NaN where it is undefined (a ranking metric on a single class).

    Label metrics decide labels from `score` (at `threshold` for binary), unless `predicted` gives the
    labels that were actually answered (monitoring reads them from the prediction log).
    """
    y = np.asarray(y)
    score = np.asarray(score)
    w = None
    if weights is not None:
        keep = weights > 0
        y, score, w = y[keep], score[keep], weights[keep]
        predicted = None if predicted is None else np.asarray(predicted)[keep]
    if len(y) == 0:
        return float("nan")
    needs = spec(task, metric).needs
    if task == "regression":
        y, score = y.astype(np.float64), score.astype(np.float64)
        if metric == "rmse":
            return float(np.sqrt(mean_squared_error(y, score, sample_weight=w)))
        if metric == "mae":
            return float(mean_absolute_error(y, score, sample_weight=w))
        if metric == "mape":
            return float(mean_absolute_percentage_error(y, score, sample_weight=w))
        return float(r2_score(y, score, sample_weight=w)) if len(y) > 1 else float("nan")
    if task == "binary":
        both = len(np.unique(y)) == 2
        if metric == "roc_auc":
            return float(roc_auc_score(y, score, sample_weight=w)) if both else float("nan")
        if metric == "pr_auc":
            return float(average_precision_score(y, score, sample_weight=w)) if both else float("nan")
        if metric == "log_loss":
            return float(log_loss(y, score, sample_weight=w, labels=[0, 1]))
        if metric == "brier":
            return float(brier_score_loss(y, score, sample_weight=w, pos_label=1))
    k = score.shape[1] if task == "multiclass" else 2
    labels = np.arange(k)
    if task == "multiclass" and needs == "proba":
        if metric == "log_loss":
            return float(log_loss(y, score, sample_weight=w, labels=labels))
        if len(np.unique(y)) != k:
            return float("nan")  # one-vs-rest AUC needs every class present
        return float(roc_auc_score(y, score, sample_weight=w, multi_class="ovr", labels=labels))
    pred = hard_labels(task, score, threshold) if predicted is None else np.asarray(predicted)
    if metric == "accuracy":
        return float(accuracy_score(y, pred, sample_weight=w))
    if metric == "balanced_accuracy":
        # sklearn warns (and averages what it has) when a class is absent from y.
        present = np.unique(y)
        return float(balanced_accuracy_score(y, pred, sample_weight=w)) if len(present) > 1 else float("nan")
    average = {"f1": "binary", "f1_macro": "macro", "f1_weighted": "weighted"}[metric]
    return float(
        f1_score(
            y, pred, sample_weight=w, average=average, labels=None if task == "binary" else labels, zero_division=0
        )
    )


def compute_metrics(task: Task, y: Any, score: Any, threshold: float = 0.5) -> dict[str, float]:
    """Every metric of the task's catalogue."""
    return {m: metric_value(task, m, y, score, threshold=threshold) for m in metric_names(task)}


def choose_threshold(y: Any, proba: Any) -> float:
    """The probability threshold that maximises F1 on (validation) data.

    For an imbalanced target the default 0.5 is rarely right; F1 balances missed fraud against
    false alarms without needing a cost the contract does not give.
    """
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, proba)
    # The last (precision, recall) pair has no threshold.
    p, r = precision[:-1], recall[:-1]
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    return float(thresholds[int(np.argmax(f1))])


def slice_masks(frame: pd.DataFrame, contract: DatasetContract) -> dict[str, np.ndarray]:
    """One boolean mask per value of each slice column, named ``column=value``."""
    masks: dict[str, np.ndarray] = {}
    for col in contract.slice_columns:
        values = frame[col].astype("object").where(frame[col].notna(), "__missing__")
        for value in sorted(values.unique(), key=str):
            masks[f"{col}={value}"] = (values == value).to_numpy()
    return masks


def slice_metrics(
    task: Task,
    y: Any,
    score: Any,
    masks: dict[str, np.ndarray],
    *,
    threshold: float = 0.5,
    min_rows: int = 1,
) -> dict[str, dict[str, float]]:
    """Metrics per slice; slices with fewer than `min_rows` rows are left out (too noisy to read)."""
    y = np.asarray(y)
    score = np.asarray(score)
    out: dict[str, dict[str, float]] = {}
    for name, mask in masks.items():
        if int(mask.sum()) < min_rows:
            continue
        out[name] = {"rows": float(mask.sum()), **compute_metrics(task, y[mask], score[mask], threshold)}
    return out


class RankedScores:
    """Weighted PR AUC and ROC AUC in O(n) per call, for bootstrap replicates of one fixed score vector.

    Sorting once and re-weighting is what makes a 500-replicate paired bootstrap on a large holdout
    cheap: sklearn re-sorts on every call. A bootstrap replicate is a vector of row counts (weights).
    Results match sklearn's average_precision_score / roc_auc_score with ``sample_weight``.
    """

    def __init__(self, y: Any, score: Any) -> None:
        score = np.asarray(score, dtype=np.float64)
        order = np.argsort(-score, kind="mergesort")
        self._y = np.asarray(y)[order].astype(np.float64)
        sorted_score = score[order]
        # Index of the last row of each group of tied scores: a threshold sits between groups.
        distinct = np.flatnonzero(np.diff(sorted_score))
        self._ends = np.r_[distinct, len(sorted_score) - 1]
        self._order = order

    def _curves(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = weights[self._order].astype(np.float64)
        tps = np.cumsum(w * self._y)[self._ends]
        fps = np.cumsum(w)[self._ends] - tps
        return tps, fps

    def average_precision(self, weights: np.ndarray) -> float:
        tps, fps = self._curves(weights)
        if tps[-1] <= 0:
            return float("nan")
        precision = np.divide(tps, tps + fps, out=np.ones_like(tps), where=(tps + fps) > 0)
        recall = tps / tps[-1]
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))

    def roc_auc(self, weights: np.ndarray) -> float:
        tps, fps = self._curves(weights)
        if tps[-1] <= 0 or fps[-1] <= 0:
            return float("nan")
        tpr = np.r_[0.0, tps / tps[-1]]
        fpr = np.r_[0.0, fps / fps[-1]]
        return float(np.trapezoid(tpr, fpr))


def weighted_metric(task: Task, metric: str, y: Any, score: Any, weights: np.ndarray, *, threshold: float) -> float:
    """`metric` under bootstrap row weights (the path for metrics RankedScores does not cover)."""
    return metric_value(task, metric, y, score, threshold=threshold, weights=weights)
