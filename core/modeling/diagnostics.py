"""Plots logged with every trained model: they describe a model, the gate decides on numbers.

Binary: confusion matrix at the chosen threshold, ROC and PR curves, calibration curve. Multiclass: the
confusion matrix.
Regression: residuals. Both: permutation importance of the raw input columns through the whole
pipeline (so it is in the contract's terms, not one-hot columns). On at most ``max_rows`` test rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: flows run in workers without a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.calibration import CalibrationDisplay
from sklearn.inspection import permutation_importance
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

from core.contract import DatasetContract
from core.modeling.catalogue import higher_is_better
from core.modeling.metrics import metric_value
from core.modeling.training import encode_target, model_classes, predict_scores


def metric_scorer(contract: DatasetContract, metric: str, threshold: float) -> Any:
    """A scikit-learn scorer for any catalogue metric (higher is better: lower-is-better metrics negated),
    computed by the same code as every other metric, so permutation importance works for every task."""
    sign = 1.0 if higher_is_better(metric) else -1.0

    def score(estimator: Any, X: pd.DataFrame, y: np.ndarray) -> float:
        codes = encode_target(y, contract, model_classes(estimator))
        scores = predict_scores(estimator, X, contract)
        return sign * metric_value(contract.task, metric, codes, scores, threshold=threshold)

    return score


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(
    model: Any,
    X: pd.DataFrame,
    labels: np.ndarray,
    score: np.ndarray,
    *,
    contract: DatasetContract,
    threshold: float,
    out_dir: Path,
    primary_metric: str,
    max_rows: int = 5_000,
    seed: int = 42,
) -> list[Path]:
    """`labels` as the contract types them, `score` as core.modeling.training.predict_scores returns it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if len(labels) > max_rows:
        idx = np.sort(rng.choice(len(labels), max_rows, replace=False))
        X, labels, score = X.iloc[idx], labels[idx], score[idx]
    y = encode_target(labels, contract, model_classes(model))
    paths: list[Path] = []
    if contract.task == "binary" and len(np.unique(y)) == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        ConfusionMatrixDisplay.from_predictions(y, (score >= threshold).astype(int), ax=ax, colorbar=False)
        ax.set_title(f"Confusion matrix (threshold {threshold:.3f})")
        paths.append(_save(fig, out_dir / "confusion_matrix.png"))
        fig, ax = plt.subplots(figsize=(4, 4))
        RocCurveDisplay.from_predictions(y, score, ax=ax)
        paths.append(_save(fig, out_dir / "roc_curve.png"))
        fig, ax = plt.subplots(figsize=(4, 4))
        PrecisionRecallDisplay.from_predictions(y, score, ax=ax)
        paths.append(_save(fig, out_dir / "pr_curve.png"))
        fig, ax = plt.subplots(figsize=(4, 4))
        CalibrationDisplay.from_predictions(y, score, n_bins=10, strategy="quantile", ax=ax)
        paths.append(_save(fig, out_dir / "calibration.png"))
    elif contract.task == "multiclass":
        classes = [str(c) for c in model_classes(model)]
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(classes), 1.0 + 0.6 * len(classes)))
        ConfusionMatrixDisplay.from_predictions(
            y, score.argmax(axis=1), labels=list(range(len(classes))), display_labels=classes, ax=ax, colorbar=False
        )
        ax.set_title("Confusion matrix")
        paths.append(_save(fig, out_dir / "confusion_matrix.png"))
    elif contract.task == "regression":
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(score, y - score, s=3, alpha=0.3)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("prediction")
        ax.set_ylabel("residual (actual - prediction)")
        paths.append(_save(fig, out_dir / "residuals.png"))
    if len(np.unique(y)) > 1:
        columns = contract.feature_columns + contract.time_feature_columns
        scoring = metric_scorer(contract, primary_metric, threshold)
        result = permutation_importance(model, X, labels, scoring=scoring, n_repeats=3, random_state=seed, n_jobs=1)
        mean = pd.Series(result.importances_mean, index=list(X.columns)).loc[columns].sort_values()
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(mean) + 1))
        ax.barh(mean.index, mean.to_numpy())
        ax.set_xlabel(f"drop in {primary_metric} when shuffled")
        ax.set_title("Permutation importance (test)")
        paths.append(_save(fig, out_dir / "permutation_importance.png"))
    return paths
