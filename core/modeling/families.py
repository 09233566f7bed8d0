"""Candidate model families: each is a Pipeline of the contract's preprocessor and one estimator.

A family knows how to build its estimator for the contract's task from a flat dict of params, its
default params, its Optuna search space, and the exact types skops must trust to load it. The logged
object is always a plain sklearn Pipeline (preprocessor + estimator), so serving can call
``predict_proba`` and an ONNX conversion stays simple; the decision threshold is stored beside it.

The SVM is an approximate kernel machine (Nystroem features + a linear SVM), calibrated with
sigmoid scaling so that it has probabilities. An exact kernel SVC costs O(n^2) memory and time, so
the family is only fitted when the training split is at most ``training.svm_max_rows`` rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC, LinearSVR

from core.contract import DatasetContract
from core.modeling.features import build_preprocessor

FamilyName = Literal["logistic", "random_forest", "hist_gradient_boosting", "svm", "mlp"]
Params = dict[str, Any]


@dataclass(frozen=True)
class Family:
    name: FamilyName
    build: Callable[[Params, bool, int], BaseEstimator]  # (params, is_classifier, seed) -> estimator
    defaults: Params
    suggest: Callable[[optuna.Trial], Params]
    # The estimator's own types skops must trust beyond its defaults (core.registry.artefact adds the
    # ones every Pipeline holds).
    trusted_types: tuple[str, ...]


def _logistic(p: Params, clf: bool, seed: int) -> BaseEstimator:
    if clf:
        return LogisticRegression(C=p["C"], class_weight=p.get("class_weight"), max_iter=1000)
    return Ridge(alpha=1.0 / p["C"])


def _random_forest(p: Params, clf: bool, seed: int) -> BaseEstimator:
    cls = RandomForestClassifier if clf else RandomForestRegressor
    return cls(
        n_estimators=p["n_estimators"],
        max_depth=p["max_depth"],
        min_samples_leaf=p["min_samples_leaf"],
        max_features=p["max_features"],
        n_jobs=1,
        random_state=seed,
    )


def _hist_gradient_boosting(p: Params, clf: bool, seed: int) -> BaseEstimator:
    cls = HistGradientBoostingClassifier if clf else HistGradientBoostingRegressor
    return cls(
        learning_rate=p["learning_rate"],
        max_iter=p["max_iter"],
        max_leaf_nodes=p["max_leaf_nodes"],
        min_samples_leaf=p["min_samples_leaf"],
        l2_regularization=p["l2_regularization"],
        # A fixed number of iterations: early stopping would carve its own random validation set
        # out of a time-ordered training split.
        early_stopping=False,
        random_state=seed,
    )


def _svm(p: Params, clf: bool, seed: int) -> BaseEstimator:
    kernel = Nystroem(kernel="rbf", gamma=p["gamma"], n_components=p["n_components"], random_state=seed)
    if clf:
        svc = LinearSVC(C=p["C"], random_state=seed)
        # Sigmoid calibration gives the scores probabilities (log loss, Brier, thresholds need them).
        return Pipeline([("kernel", kernel), ("svm", CalibratedClassifierCV(svc, method="sigmoid", cv=3))])
    return Pipeline([("kernel", kernel), ("svm", LinearSVR(C=p["C"], random_state=seed, max_iter=5000))])


def _mlp(p: Params, clf: bool, seed: int) -> BaseEstimator:
    cls = MLPClassifier if clf else MLPRegressor
    return cls(
        hidden_layer_sizes=tuple([p["width"]] * p["depth"]),
        alpha=p["alpha"],
        learning_rate_init=p["learning_rate_init"],
        batch_size=512,
        max_iter=p["max_iter"],
        early_stopping=True,
        n_iter_no_change=5,
        random_state=seed,
    )


def _suggest_logistic(t: optuna.Trial) -> Params:
    return {
        "C": t.suggest_float("logistic.C", 1e-3, 1e2, log=True),
        "class_weight": t.suggest_categorical("logistic.class_weight", [None, "balanced"]),
    }


def _suggest_random_forest(t: optuna.Trial) -> Params:
    return {
        "n_estimators": t.suggest_int("random_forest.n_estimators", 50, 300, step=50),
        "max_depth": t.suggest_int("random_forest.max_depth", 4, 20),
        "min_samples_leaf": t.suggest_int("random_forest.min_samples_leaf", 1, 50, log=True),
        "max_features": t.suggest_float("random_forest.max_features", 0.2, 1.0),
    }


def _suggest_hist_gradient_boosting(t: optuna.Trial) -> Params:
    return {
        "learning_rate": t.suggest_float("hist_gradient_boosting.learning_rate", 0.02, 0.3, log=True),
        "max_iter": t.suggest_int("hist_gradient_boosting.max_iter", 50, 400, step=50),
        "max_leaf_nodes": t.suggest_int("hist_gradient_boosting.max_leaf_nodes", 8, 63),
        "min_samples_leaf": t.suggest_int("hist_gradient_boosting.min_samples_leaf", 10, 200, log=True),
        "l2_regularization": t.suggest_float("hist_gradient_boosting.l2_regularization", 1e-6, 10.0, log=True),
    }


def _suggest_svm(t: optuna.Trial) -> Params:
    return {
        "C": t.suggest_float("svm.C", 1e-3, 10.0, log=True),
        "gamma": t.suggest_float("svm.gamma", 1e-3, 1.0, log=True),
        "n_components": t.suggest_int("svm.n_components", 50, 300, step=50),
    }


def _suggest_mlp(t: optuna.Trial) -> Params:
    return {
        "width": t.suggest_int("mlp.width", 16, 128, log=True),
        "depth": t.suggest_int("mlp.depth", 1, 3),
        "alpha": t.suggest_float("mlp.alpha", 1e-6, 1e-1, log=True),
        "learning_rate_init": t.suggest_float("mlp.learning_rate_init", 1e-4, 1e-2, log=True),
        "max_iter": 50,
    }


FAMILIES: dict[str, Family] = {
    "logistic": Family(
        "logistic",
        _logistic,
        {"C": 1.0, "class_weight": None},
        _suggest_logistic,
        (),
    ),
    "random_forest": Family(
        "random_forest",
        _random_forest,
        {"n_estimators": 100, "max_depth": 12, "min_samples_leaf": 5, "max_features": 0.5},
        _suggest_random_forest,
        ("sklearn.tree._tree.Tree",),
    ),
    "hist_gradient_boosting": Family(
        "hist_gradient_boosting",
        _hist_gradient_boosting,
        {"learning_rate": 0.1, "max_iter": 200, "max_leaf_nodes": 31, "min_samples_leaf": 20, "l2_regularization": 0.0},
        _suggest_hist_gradient_boosting,
        ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",),
    ),
    "svm": Family(
        "svm",
        _svm,
        {"C": 0.1, "gamma": 0.05, "n_components": 100},
        _suggest_svm,
        (
            "sklearn.calibration._CalibratedClassifier",
            "sklearn.calibration._SigmoidCalibration",
        ),
    ),
    "mlp": Family(
        "mlp",
        _mlp,
        {"width": 64, "depth": 2, "alpha": 1e-4, "learning_rate_init": 1e-3, "max_iter": 50},
        _suggest_mlp,
        ("sklearn.neural_network._stochastic_optimizers.AdamOptimizer",),
    ),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


def build_pipeline(contract: DatasetContract, family: str, params: Params | None = None, seed: int = 42) -> Pipeline:
    """The contract's preprocessor followed by the family's estimator, with defaults for missing params."""
    fam = get_family(family)
    merged = {**fam.defaults, **(params or {})}
    estimator = fam.build(merged, contract.is_classification, seed)
    return Pipeline([("preprocess", build_preprocessor(contract)), ("model", estimator)])


def families_for(names: list[str], n_train_rows: int, svm_max_rows: int) -> tuple[list[str], dict[str, str]]:
    """The families that fit this data size, and why any were skipped."""
    keep: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        get_family(name)
        if name == "svm" and n_train_rows > svm_max_rows:
            skipped[name] = f"{n_train_rows} training rows > svm_max_rows {svm_max_rows}"
        else:
            keep.append(name)
    return keep, skipped


def suggest(trial: optuna.Trial, families: list[str]) -> tuple[str, Params]:
    """Pick a family, then that family's params (a conditional search space)."""
    family = str(trial.suggest_categorical("family", families))
    return family, get_family(family).suggest(trial)


def params_from_optuna(family: str, optuna_params: dict[str, Any]) -> Params:
    """Turn a trial's namespaced params ("hist_gradient_boosting.max_iter") back into family params."""
    prefix = f"{family}."
    params = {k.removeprefix(prefix): v for k, v in optuna_params.items() if k.startswith(prefix)}
    return {**get_family(family).defaults, **params}
