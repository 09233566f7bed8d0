"""The metric catalogue: which metrics each task has, which way is better, and each task's default.

Pure data, cheap to import: settings check a named metric against it at load, before anything slow
starts. The computations live in core.modeling.metrics; every place a metric is named (the primary
metric, the tuning objective, the gate, diagnostics and permutation importance, monitoring) takes its
name from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["binary", "multiclass", "regression"]
# What a metric reads: class probabilities, hard labels, or predicted values.
Needs = Literal["proba", "label", "value"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool
    needs: Needs
    description: str


_BINARY = (
    MetricSpec("roc_auc", True, "proba", "area under the ROC curve of P(positive)"),
    MetricSpec("pr_auc", True, "proba", "average precision of P(positive): for rare positives"),
    MetricSpec("f1", True, "label", "F1 of the positive class at the decision threshold"),
    MetricSpec("log_loss", False, "proba", "log loss of the predicted probabilities"),
    MetricSpec("brier", False, "proba", "mean squared error of P(positive)"),
    MetricSpec("accuracy", True, "label", "share of correct labels at the decision threshold"),
    MetricSpec("balanced_accuracy", True, "label", "mean recall of the two classes at the decision threshold"),
)
_MULTICLASS = (
    MetricSpec("accuracy", True, "label", "share of correct labels"),
    MetricSpec("balanced_accuracy", True, "label", "mean recall over the classes"),
    MetricSpec("f1_macro", True, "label", "F1 averaged over the classes, each counting equally"),
    MetricSpec("f1_weighted", True, "label", "F1 averaged over the classes, weighted by their frequency"),
    MetricSpec("log_loss", False, "proba", "log loss of the class probabilities"),
    MetricSpec("roc_auc_ovr", True, "proba", "one-vs-rest ROC AUC, averaged over the classes"),
)
_REGRESSION = (
    MetricSpec("rmse", False, "value", "root mean squared error"),
    MetricSpec("mae", False, "value", "mean absolute error"),
    MetricSpec("r2", True, "value", "coefficient of determination"),
    MetricSpec("mape", False, "value", "mean absolute percentage error (undefined at a true value of 0)"),
)

CATALOGUE: dict[str, dict[str, MetricSpec]] = {
    "binary": {m.name: m for m in _BINARY},
    "multiclass": {m.name: m for m in _MULTICLASS},
    "regression": {m.name: m for m in _REGRESSION},
}
DEFAULT_METRIC: dict[str, str] = {"binary": "roc_auc", "multiclass": "f1_macro", "regression": "rmse"}


class MetricError(ValueError):
    """A metric named where the task does not have it."""


def metric_names(task: str) -> list[str]:
    return list(CATALOGUE[task])


def spec(task: str, metric: str) -> MetricSpec:
    try:
        return CATALOGUE[task][metric]
    except KeyError:
        raise MetricError(f"{metric!r} does not apply to task {task}; choose one of {metric_names(task)}") from None


def higher_is_better(metric: str) -> bool:
    """Direction of a metric by name (the same name means the same direction in every task)."""
    for metrics in CATALOGUE.values():
        if metric in metrics:
            return metrics[metric].higher_is_better
    raise MetricError(f"unknown metric {metric!r}")


def all_metric_names() -> list[str]:
    return sorted({name for metrics in CATALOGUE.values() for name in metrics})
