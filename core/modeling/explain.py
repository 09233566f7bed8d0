"""Why a model scored a row as it did: exact contributions per contract column, or an honest "unavailable".

An explanation splits one raw model output into a base value plus one signed contribution per contract
column, and the parts add up to the output (within float rounding):

    base_value + sum(contributions) == raw output

* **Linear** (logistic regression, ridge): by the coefficients. The raw output is the log-odds of the
  positive class (binary), the logit of the explained class (multiclass: the predicted class) or the
  value (regression). The base value is the intercept, so a column's contribution is its coefficient times
  its preprocessed value: numbers are standardised on the training rows, so a number at its training mean
  contributes 0; a category contributes its own coefficient; a time feature is measured from the circle's
  centre (what the preprocessor gives a missing timestamp).
* **Tree ensembles** (random forest, histogram gradient boosting): TreeSHAP (the `shap` package, the
  path-dependent algorithm: exact for the trees, the base value is the trees' expected output over the
  training rows they saw). Raw output: log-odds or logit for gradient boosting classifiers, the
  probability for a random forest classifier (a forest averages its leaves' probabilities), the value for
  regressors.
* **Anything else** (the SVM family's kernel approximation with calibration, the MLP): no exact method
  here. The explanation says ``method="unavailable"`` with the reason; it never returns an approximation
  in the place of an exact answer.

Contributions are computed on the preprocessed feature matrix and then summed per source column through
the fitted preprocessor (core.modeling.features): every one-hot column of a category, a missing-value
indicator, and the sine and cosine of a derived time feature are attributed to the contract column they
came from. Sums keep the additivity.

Prefect-free and MLflow-free: serving imports it. `shap` is imported only when a tree model is explained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from core.contract import label_text
from core.modeling.features import TimeFeatures, to_model_input

if TYPE_CHECKING:
    from core.contract import DatasetContract

Method = Literal["linear", "tree_shap", "unavailable"]
Output = Literal["log_odds", "logit", "probability", "value"]
# By name, so that importing this module does not import sklearn.ensemble (seconds) into a serving process.
LINEAR = frozenset({"sklearn.linear_model.LogisticRegression", "sklearn.linear_model.Ridge"})
TREES = frozenset(
    {
        f"sklearn.ensemble.{name}"
        for name in (
            "HistGradientBoostingClassifier",
            "HistGradientBoostingRegressor",
            "RandomForestClassifier",
            "RandomForestRegressor",
        )
    }
)


def _kind(estimator: Any) -> str:
    """The estimator's public scikit-learn name (``sklearn.ensemble.RandomForestClassifier``); exact types
    only: a subclass may compute something else."""
    cls = type(estimator)
    module = cls.__module__.split("._")[0]
    return f"{module}.{cls.__name__}"


class NotExplainableError(Exception):
    """A preprocessing step whose outputs cannot be traced back to contract columns."""


# ---- attribution of preprocessed features to contract columns ------------------------------------------
def feature_sources(preprocessor: ColumnTransformer) -> list[str]:
    """The contract column behind each column of the fitted preprocessor's output, in output order."""
    sources: list[str] = []
    for name, step, cols in preprocessor.transformers_:
        if (isinstance(step, str) and step == "drop") or len(cols) == 0:
            continue
        names = [preprocessor.feature_names_in_[c] if isinstance(c, int | np.integer) else c for c in cols]
        block = _step_sources(step, [str(n) for n in names])
        width = preprocessor.output_indices_[name]
        if len(block) != width.stop - width.start:
            raise NotExplainableError(f"transformer {name!r}: traced {len(block)} outputs, it has {width}")
        sources.extend(block)
    return sources


def _step_sources(step: Any, inputs: list[str]) -> list[str]:
    if isinstance(step, str) and step == "passthrough":
        return inputs
    if isinstance(step, Pipeline):
        for _, sub in step.steps:
            if sub not in (None, "passthrough"):
                inputs = _step_sources(sub, inputs)
        return inputs
    if isinstance(step, SimpleImputer):
        stats = np.asarray(step.statistics_)
        kept = inputs
        if not step.keep_empty_features and stats.dtype.kind == "f":
            kept = [c for c, s in zip(inputs, stats, strict=True) if not np.isnan(s)]
        indicators = [inputs[j] for j in step.indicator_.features_] if step.add_indicator else []
        return [*kept, *indicators]
    if isinstance(step, OneHotEncoder):
        if getattr(step, "_infrequent_enabled", False):
            raise NotExplainableError("OneHotEncoder with infrequent categories")
        drops = step.drop_idx_ if step.drop_idx_ is not None else [None] * len(inputs)
        return [
            c
            for c, cats, d in zip(inputs, step.categories_, drops, strict=True)
            for _ in range(len(cats) - (d is not None))
        ]
    if isinstance(step, TimeFeatures):
        return [c for c in inputs for _ in range(2 * len(step.features))]
    out = step.get_feature_names_out() if hasattr(step, "get_feature_names_out") else None
    if out is not None and len(out) == len(inputs):  # one output per input (a scaler, a power transform)
        return inputs
    raise NotExplainableError(f"cannot trace the outputs of {type(step).__name__} back to its input columns")


# ---- explanations ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Explanation:
    """n rows explained: base[i] + contributions[i].sum() == raw[i] (method "unavailable": all empty)."""

    method: Method
    output: Output | None
    columns: tuple[str, ...]  # the contract columns, in the order of the contributions' columns
    explained: list[Any]  # per row, the class whose output is explained (None for regression)
    base: np.ndarray  # (n,)
    contributions: np.ndarray  # (n, len(columns))
    raw: np.ndarray  # (n,): the model's raw output for the explained class
    reason: str | None = None  # why there is no exact method (method "unavailable")

    @property
    def available(self) -> bool:
        return self.method != "unavailable"


class ModelExplainer:
    """Explains a fitted Pipeline (the contract's ColumnTransformer + one estimator).

    Build it once per model (TreeSHAP reads the trees once); `explain` is then called on preprocessed
    rows (what serving already computed) and `explain_frame` on rows of the contract's columns.
    """

    def __init__(self, pipeline: Any, contract: DatasetContract, *, positive_class: Any = None) -> None:
        self.pipeline = pipeline
        self.contract = contract
        self.estimator = pipeline[-1]
        self.classes: list[Any] = [
            c.item() if hasattr(c, "item") else c for c in getattr(self.estimator, "classes_", [])
        ]
        positive = positive_class if positive_class is not None else contract.target.positive_class
        texts = [label_text(c) for c in self.classes]
        self.positive_index = (
            texts.index(label_text(positive)) if positive is not None and label_text(positive) in texts else 1
        )
        self.method: Method = "unavailable"
        self.output: Output | None = None
        self.reason: str | None = None
        self._tree: Any = None
        self.columns: tuple[str, ...] = ()
        try:
            preprocess = pipeline[:-1]
            if len(preprocess) != 1 or not isinstance(preprocess[0], ColumnTransformer):
                raise NotExplainableError("expected the Pipeline to be one ColumnTransformer + an estimator")
            sources = feature_sources(preprocess[0])
        except NotExplainableError as exc:
            self.reason = f"the preprocessor cannot be traced to contract columns: {exc}"
            return
        self.columns = tuple(dict.fromkeys(sources))
        index = {c: i for i, c in enumerate(self.columns)}
        # (n_features, n_columns) 0/1: a row of feature contributions @ it = contributions per column.
        self._to_columns = np.zeros((len(sources), len(self.columns)))
        self._to_columns[np.arange(len(sources)), [index[s] for s in sources]] = 1.0
        self._set_method()

    @property
    def is_classifier(self) -> bool:
        return bool(self.classes)

    def _set_method(self) -> None:
        est = self.estimator
        kind = _kind(est)
        multiclass = len(self.classes) > 2
        if kind in LINEAR:
            self.method = "linear"
            self.output = "value" if not self.is_classifier else ("logit" if multiclass else "log_odds")
        elif kind in TREES:
            self.method = "tree_shap"
            if kind.endswith("RandomForestClassifier"):
                self.output = "probability"
            else:
                self.output = "value" if not self.is_classifier else ("logit" if multiclass else "log_odds")
        else:
            self.reason = (
                f"no exact attribution for {type(est).__name__}: reason codes are given for linear models "
                "(coefficients) and tree ensembles (TreeSHAP); an approximation is not returned in their place"
            )

    def _tree_explainer(self) -> Any:
        if self._tree is None:
            import shap  # ~3 s to import (numba): only when a tree model is explained

            self._tree = shap.TreeExplainer(self.estimator)
        return self._tree

    def warm(self) -> None:
        """Build what the first call would (TreeSHAP's reading of the trees), so a request does not pay it."""
        if self.method == "tree_shap":
            self._tree_explainer()

    def features(self, frame: pd.DataFrame) -> np.ndarray:
        """The preprocessed matrix of rows of the contract's columns."""
        return np.asarray(self.pipeline[:-1].transform(to_model_input(frame, self.contract)), dtype=np.float64)

    def explain_frame(self, frame: pd.DataFrame, explained: Sequence[Any] | None = None) -> Explanation:
        """`explain` on rows of the contract's columns."""
        if not self.available:
            return self._unavailable(len(frame))
        return self.explain(self.features(frame), explained)

    @property
    def available(self) -> bool:
        return self.method != "unavailable"

    def _unavailable(self, n: int) -> Explanation:
        return Explanation(
            "unavailable", None, self.columns, [None] * n, np.full(n, np.nan), np.zeros((n, 0)), np.full(n, np.nan),
            reason=self.reason,
        )  # fmt: skip

    def _explained_indexes(self, n: int, explained: Sequence[Any] | None) -> np.ndarray:
        """Which output column each row explains: the positive class (binary), the given labels, or 0."""
        if not self.is_classifier:
            return np.zeros(n, dtype=np.int64)
        if len(self.classes) == 2 and explained is None:
            return np.full(n, self.positive_index, dtype=np.int64)
        if explained is None:
            raise ValueError("a multiclass explanation needs the class to explain for each row (the predicted one)")
        texts = [label_text(c) for c in self.classes]
        return np.array([texts.index(label_text(e)) for e in explained], dtype=np.int64)

    def explain(self, X: np.ndarray, explained: Sequence[Any] | None = None) -> Explanation:
        """Explain rows of the preprocessed matrix `X`.

        `explained`: per row, the class whose raw output is explained (multiclass: pass the predicted
        labels). A binary model always explains the positive class's log-odds (or probability); a
        regressor its value.
        """
        n = len(X)
        if not self.available:
            return self._unavailable(n)
        X = np.asarray(X, dtype=np.float64)
        if len(self.classes) == 2:
            explained = None  # always the positive class: the score the threshold is applied to
        k = self._explained_indexes(n, explained)
        if self.method == "linear":
            phi, base = self._linear(X, k)
        else:
            phi, base = self._shap(X, k)
        contributions = phi @ self._to_columns
        raw = base + phi.sum(axis=1)
        labels = [self.classes[i] for i in k.tolist()] if self.is_classifier else [None] * n
        return Explanation(self.method, self.output, self.columns, labels, base, contributions, raw)

    def _linear(self, X: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        coef = np.atleast_2d(np.asarray(self.estimator.coef_, dtype=np.float64))
        intercept = np.atleast_1d(np.asarray(self.estimator.intercept_, dtype=np.float64))
        if coef.shape[0] == 1:  # binary or regression: one row of coefficients, for classes_[1] if binary
            sign = -1.0 if self.is_classifier and self.positive_index == 0 else 1.0
            return sign * X * coef[0], np.full(len(X), sign * intercept[0])
        return X * coef[k], intercept[k]

    def _shap(self, X: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tree = self._tree_explainer()
        values = np.asarray(tree.shap_values(X, check_additivity=False), dtype=np.float64)
        expected = np.atleast_1d(np.asarray(tree.expected_value, dtype=np.float64))
        rows = np.arange(len(X))
        if values.ndim == 2:  # one output: a regressor, or a binary booster's log-odds of classes_[1]
            sign = -1.0 if self.is_classifier and self.positive_index == 0 else 1.0
            return sign * values, np.full(len(X), sign * expected[0])
        return values[rows, :, k], expected[k]


# ---- reason codes --------------------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """A record's value as JSON carries it (timestamps as ISO text, NaN as null)."""
    if value is None:
        return None
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else str(value.astype("datetime64[s]"))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    if hasattr(value, "isoformat"):
        return None if pd.isna(value) else value.isoformat()
    return value


def top_reasons(explanation: Explanation, values: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """Per row, the answer an API gives: method, base value, the top-k contributions by size (column, the
    record's value, signed contribution) and the sum of the others, so base + top-k + other == raw."""
    n = len(explanation.explained)
    if not explanation.available:
        return [{"method": "unavailable", "reason": explanation.reason} for _ in range(n)]
    order = np.argsort(-np.abs(explanation.contributions), axis=1, kind="stable")[:, :k]
    out = []
    for i in range(n):
        top = order[i].tolist()
        reasons = [
            {
                "column": explanation.columns[j],
                "value": jsonable(values[explanation.columns[j]][i]) if explanation.columns[j] in values else None,
                "contribution": float(explanation.contributions[i, j]),
            }
            for j in top
        ]
        explained = explanation.explained[i]
        out.append(
            {
                "method": explanation.method,
                "output": explanation.output,
                "explained_class": label_text(explained) if explained is not None else None,
                "base_value": float(explanation.base[i]),
                "raw_output": float(explanation.raw[i]),
                "reasons": reasons,
                "other": float(explanation.contributions[i].sum() - sum(r["contribution"] for r in reasons)),
            }
        )
    return out


def global_importance(explanation: Explanation) -> dict[str, float]:
    """Mean |contribution| per column over the explained rows, largest first."""
    if not explanation.available or not len(explanation.contributions):
        return {}
    mean = np.abs(explanation.contributions).mean(axis=0)
    order = np.argsort(-mean, kind="stable")
    return {explanation.columns[j]: float(mean[j]) for j in order}
