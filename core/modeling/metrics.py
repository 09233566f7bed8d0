"""Metrics by task, per slice, the decision threshold, and fast weighted ranking metrics for the bootstrap.

Scores are what a model outputs for the metric: the positive-class probability (binary), the class
probability matrix (multiclass) or the prediction (regression).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_curve,
    r2_score,
    roc_auc_score,
)

from core.contract import DatasetContract, Task

HIGHER_IS_BETTER = {"roc_auc": True, "pr_auc": True, "f1": True, "accuracy": True, "r2": True}
LOWER_IS_BETTER = {"log_loss", "brier", "rmse", "mae"}


METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc", "f1", "log_loss", "brier"),
    "multiclass": ("roc_auc", "log_loss", "f1", "accuracy"),
    "regression": ("rmse", "mae", "r2"),
}


def check_primary_metric(task: Task, metric: str) -> None:
    """Refuse a primary metric the task does not have (e.g. pr_auc for a regression contract)."""
    if metric not in METRICS_BY_TASK[task]:
        raise ValueError(
            f"training.primary_metric {metric!r} does not apply to task {task}; choose one of {METRICS_BY_TASK[task]}"
        )


def higher_is_better(metric: str) -> bool:
    if metric in HIGHER_IS_BETTER:
        return True
    if metric in LOWER_IS_BETTER:
        return False
    raise ValueError(f"unknown metric {metric!r}")


def compute_metrics(task: Task, y: Any, score: Any, threshold: float = 0.5) -> dict[str, float]:
    """Every metric for the task; a ranking metric is NaN when only one class is present."""
    y = np.asarray(y)
    score = np.asarray(score)
    if task == "regression":
        return {
            "rmse": float(np.sqrt(mean_squared_error(y, score))),
            "mae": float(mean_absolute_error(y, score)),
            "r2": float(r2_score(y, score)) if len(y) > 1 else float("nan"),
        }
    if task == "multiclass":
        labels = np.arange(score.shape[1])
        both = len(np.unique(y)) == score.shape[1]
        return {
            "roc_auc": float(roc_auc_score(y, score, multi_class="ovr")) if both else float("nan"),
            "log_loss": float(log_loss(y, score, labels=labels)),
            "f1": float(f1_score(y, score.argmax(axis=1), average="macro", labels=labels, zero_division=0)),
            "accuracy": float(accuracy_score(y, score.argmax(axis=1))),
        }
    two_classes = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, score)) if two_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, score)) if two_classes else float("nan"),
        "f1": float(f1_score(y, score >= threshold, zero_division=0)),
        "log_loss": float(log_loss(y, score, labels=[0, 1])),
        "brier": float(brier_score_loss(y, score, pos_label=1)),
    }


def primary_score(task: Task, metric: str, y: Any, score: Any, threshold: float = 0.5) -> float:
    return compute_metrics(task, y, score, threshold)[metric]


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
    """Any metric under bootstrap weights (slower path for metrics RankedScores does not cover)."""
    y = np.asarray(y)
    score = np.asarray(score)
    keep = weights > 0
    y, score, w = y[keep], score[keep], weights[keep]
    if metric == "rmse":
        return float(np.sqrt(np.average((y - score) ** 2, weights=w)))
    if metric == "mae":
        return float(np.average(np.abs(y - score), weights=w))
    if metric == "r2":
        return float(r2_score(y, score, sample_weight=w))
    if metric == "roc_auc":
        return float(roc_auc_score(y, score, sample_weight=w, multi_class="ovr"))
    if metric == "pr_auc":
        return float(average_precision_score(y, score, sample_weight=w))
    if metric == "log_loss":
        labels = np.arange(score.shape[1]) if score.ndim == 2 else [0, 1]
        return float(log_loss(y, score, sample_weight=w, labels=labels))
    if metric == "brier":
        return float(brier_score_loss(y, score, sample_weight=w, pos_label=1))
    if metric == "f1":
        pred = score.argmax(axis=1) if score.ndim == 2 else score >= threshold
        return float(f1_score(y, pred, sample_weight=w, average="binary" if task == "binary" else "macro"))
    if metric == "accuracy":
        return float(accuracy_score(y, score.argmax(axis=1), sample_weight=w))
    raise ValueError(f"unknown metric {metric!r}")
