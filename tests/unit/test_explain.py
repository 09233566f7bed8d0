"""Reason codes (core.modeling.explain): exact where claimed, named in the contract's own columns.

Generated, non-fraud data with awkward column names, a nullable number, a category, free text and a
timestamp with derived time features; binary with string labels whose positive class sorts first,
multiclass, and regression. Every family that claims exactness is checked for additivity against the
estimator's own raw output: base value + contributions == raw output within 1e-6.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.contract import DatasetContract
from core.modeling.explain import ModelExplainer, feature_sources, global_importance, top_reasons
from core.modeling.families import build_pipeline
from core.modeling.features import to_model_input
from tests.generated import TASKS, contract_for, frame_for

SMALL = {
    "logistic": {},
    "random_forest": {"n_estimators": 20, "max_depth": 6},
    "hist_gradient_boosting": {"max_iter": 30},
    "svm": {"n_components": 20},
    "mlp": {"width": 8, "depth": 1, "max_iter": 20},
}


def fitted(task: str, family: str) -> tuple[DatasetContract, Any, pd.DataFrame]:
    contract = contract_for(task)
    frame, y = frame_for(contract, 400, seed=1)
    pipeline = build_pipeline(contract, family, SMALL[family], seed=0).fit(to_model_input(frame, contract), y)
    rows, _ = frame_for(contract, 50, seed=2)
    return contract, pipeline, rows


def raw_output(pipeline: Any, frame: pd.DataFrame, contract: DatasetContract, explained: list[Any]) -> np.ndarray:
    """What each family's estimator itself says its raw output is, for the explained class of each row."""
    X = to_model_input(frame, contract)
    est = pipeline[-1]
    if contract.task == "regression":
        return np.asarray(pipeline.predict(X), dtype=np.float64)
    classes = list(est.classes_)
    cols = np.array([classes.index(e) for e in explained])
    if type(est).__name__ == "RandomForestClassifier":
        return np.asarray(pipeline.predict_proba(X))[np.arange(len(X)), cols]
    raw = np.asarray(pipeline.decision_function(X), dtype=np.float64)
    if raw.ndim == 1:  # binary: log-odds of classes_[1]
        return np.where(cols == 1, raw, -raw)
    return raw[np.arange(len(X)), cols]


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("family", ["logistic", "random_forest", "hist_gradient_boosting"])
def test_contributions_plus_base_equal_the_raw_output(task: str, family: str) -> None:
    contract, pipeline, rows = fitted(task, family)
    explainer = ModelExplainer(pipeline, contract)
    predicted = list(pipeline.predict(to_model_input(rows, contract)))
    exp = explainer.explain_frame(rows, predicted if task == "multiclass" else None)
    assert exp.method == ("linear" if family == "logistic" else "tree_shap")
    assert exp.contributions.shape == (len(rows), len(exp.columns))
    if task == "binary":
        assert set(exp.explained) == {"churned"}  # the positive class, although it is classes_[0]
    if task == "multiclass":
        assert exp.explained == predicted
    expected = raw_output(pipeline, rows, contract, exp.explained)
    np.testing.assert_allclose(exp.base + exp.contributions.sum(axis=1), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(exp.raw, expected, rtol=0, atol=1e-6)
    # Tenure drives the outcome by construction: the most important column, whatever the family.
    assert next(iter(global_importance(exp))) in {"Tenure (months)", "spend/€"}


def test_contributions_are_named_in_the_contracts_columns() -> None:
    contract, pipeline, rows = fitted("binary", "logistic")
    sources = feature_sources(pipeline[0])
    names = pipeline[0].get_feature_names_out()
    assert len(sources) == len(names)
    # Every one-hot column of the category, its missing marker included, belongs to the category;
    # the sine and cosine of hour and weekday belong to the timestamp; the missing indicator to its number.
    assert sources.count("2nd plan") == 4 and sources.count("Seen at") == 4
    assert sources.count("Tenure (months)") == 2  # the value and its missing indicator
    explainer = ModelExplainer(pipeline, contract)
    # The free-text column is not modelled and the target never is: neither is a reason.
    assert set(explainer.columns) == {"Seen at", "Tenure (months)", "spend/€", "2nd plan"}
    # A category's contribution is the coefficient of the record's category (sign: the positive class is
    # classes_[0], so the log-odds of 'churned' are minus the model's own).
    row = rows.iloc[[0]].assign(**{"2nd plan": "pro"})
    exp = explainer.explain_frame(row)
    coef = dict(zip(names, pipeline[-1].coef_[0], strict=True))
    assert exp.contributions[0, explainer.columns.index("2nd plan")] == pytest.approx(-coef["cat__2nd plan_pro"])


def test_top_reasons_carry_values_and_add_up_with_the_rest() -> None:
    contract, pipeline, rows = fitted("multiclass", "hist_gradient_boosting")
    explainer = ModelExplainer(pipeline, contract)
    predicted = list(pipeline.predict(to_model_input(rows, contract)))
    exp = explainer.explain_frame(rows, predicted)
    answers = top_reasons(exp, {c: rows[c].tolist() for c in rows}, k=2)
    for i, answer in enumerate(answers):
        assert answer["method"] == "tree_shap" and answer["output"] == "logit"
        assert answer["explained_class"] == predicted[i]
        assert len(answer["reasons"]) == 2
        sizes = [abs(r["contribution"]) for r in answer["reasons"]]
        assert sizes == sorted(sizes, reverse=True)
        total = answer["base_value"] + sum(r["contribution"] for r in answer["reasons"]) + answer["other"]
        assert total == pytest.approx(answer["raw_output"], abs=1e-6)
        for r in answer["reasons"]:
            column = r["column"]
            if column == "Seen at":
                assert r["value"] == rows[column].iloc[i].isoformat()
            elif column == "Tenure (months)" and pd.isna(rows[column].iloc[i]):
                assert r["value"] is None
            else:
                assert r["value"] == rows[column].iloc[i]


@pytest.mark.parametrize("family", ["svm", "mlp"])
@pytest.mark.parametrize("task", ["binary", "regression"])
def test_families_without_an_exact_method_say_so(task: str, family: str) -> None:
    contract, pipeline, rows = fitted(task, family)
    explainer = ModelExplainer(pipeline, contract)
    exp = explainer.explain_frame(rows.head(3))
    assert exp.method == "unavailable" and not exp.available
    assert exp.contributions.size == 0 and "no exact attribution" in (exp.reason or "")
    answers = top_reasons(exp, {}, k=3)
    assert answers == [{"method": "unavailable", "reason": exp.reason}] * 3


def test_a_multiclass_explanation_needs_the_class_to_explain() -> None:
    contract, pipeline, rows = fitted("multiclass", "logistic")
    with pytest.raises(ValueError, match="needs the class to explain"):
        ModelExplainer(pipeline, contract).explain_frame(rows)
