"""The stakeholder report (core.registry.report) for binary, multiclass and regression, on generated data that
is not the fraud one: self-contained, every section present, slice gaps flagged beyond the tolerance."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.contract import DatasetContract, parse_contract
from core.modeling.families import build_pipeline
from core.modeling.features import to_model_input
from core.modeling.gate import Decision
from core.modeling.metrics import compute_metrics
from core.modeling.training import encode_target, model_classes, predict_scores
from core.registry.report import ReportInputs, render_report, slices
from core.settings import ReportSettings

TASKS: dict[str, dict[str, Any]] = {
    "binary": {"classes": ["churned", "stayed"], "positive_class": "churned"},
    "multiclass": {"classes": ["low", "mid", "high"]},
    "regression": {},
}
METRIC = {"binary": "roc_auc", "multiclass": "f1_macro", "regression": "rmse"}


def contract_for(task: str) -> DatasetContract:
    target_type = "float" if task == "regression" else "string"
    return parse_contract(
        {
            "name": f"report-{task}",
            "description": "Which subscribers leave, and how much they spend.",
            "task": task,
            "timestamp_column": "Seen at",
            "derived_time_features": ["day_of_week"],
            "target": {"name": "outcome", **TASKS[task]},
            "columns": [
                {"name": "Seen at", "type": "datetime"},
                {"name": "Tenure (months)", "type": "float", "nullable": True},
                {"name": "spend/€", "type": "float"},
                {"name": "2nd plan", "type": "category", "categories": ["basic", "plus", "pro"]},
                {"name": "region", "type": "category", "categories": ["north", "south"]},
                {"name": "outcome", "type": target_type},
            ],
        }
    )


def frame_for(task: str, n: int, seed: int) -> pd.DataFrame:
    """The label follows tenure and spend, except in region 'south' where it is noise: a slice gap."""
    rng = np.random.default_rng(seed)
    tenure, spend = rng.uniform(0, 60, n), rng.normal(50, 15, n)
    region = rng.choice(["north", "south"], n, p=[0.7, 0.3])
    signal = -0.08 * tenure + 0.04 * spend + rng.normal(0, 0.3, n)
    noise = rng.normal(0, signal.std() * 3, n)
    signal = np.where(region == "south", noise, signal)
    frame = pd.DataFrame(
        {
            "Seen at": pd.Timestamp("2025-03-01") + pd.to_timedelta(rng.integers(0, 24 * 90, n), unit="h"),
            "Tenure (months)": np.where(rng.random(n) < 0.05, np.nan, tenure),
            "spend/€": spend,
            "2nd plan": rng.choice(["basic", "plus", "pro"], n),
            "region": region,
        }
    )
    if task == "regression":
        frame["outcome"] = signal * 10
    elif task == "binary":
        frame["outcome"] = np.where(signal > np.quantile(signal, 0.7), "churned", "stayed")
    else:
        frame["outcome"] = np.asarray(["low", "mid", "high"])[np.digitize(signal, np.quantile(signal, [1 / 3, 2 / 3]))]
    return frame


def inputs_for(task: str, family: str = "logistic", **overrides: Any) -> ReportInputs:
    contract = contract_for(task)
    train, holdout = frame_for(task, 1_200, seed=1), frame_for(task, 800, seed=2)
    params = {"n_components": 20} if family == "svm" else {"max_iter": 40} if family == "hist_gradient_boosting" else {}
    pipeline = build_pipeline(contract, family, params, seed=0)
    pipeline.fit(to_model_input(train, contract), train["outcome"].to_numpy())
    classes = model_classes(pipeline)
    y = encode_target(holdout["outcome"].to_numpy(), contract, classes)
    scores = predict_scores(pipeline, to_model_input(holdout, contract), contract)
    metrics = compute_metrics(task, y, scores, 0.5)
    decision = Decision(
        decision="promoted",
        reason="the candidate beats the baseline and no slice falls behind",
        against="baseline",
        primary_metric=METRIC[task],
        candidate_score=metrics[METRIC[task]],
        reference_score=0.5,
        delta=0.2,
        ci_low=0.15,
        ci_high=0.25,
        latency_ms=1.0,
    )
    settings = ReportSettings(**overrides)
    return ReportInputs(
        contract=contract,
        model_name=f"subscribers-{task}",
        version="7",
        family=family,
        pipeline=pipeline,
        threshold=0.5 if task == "binary" else None,
        holdout=holdout,
        y=y,
        scores=scores,
        classes=classes,
        holdout_metrics=metrics,
        reference_metrics={k: v * 0.9 for k, v in metrics.items()},
        decision=decision,
        data_version="v20250301",
        splits={"train": {"rows": 1200, "start": "2025-03-01", "end": "2025-05-01"}, "holdout": {"rows": 800}},
        train_labels=train["outcome"].to_numpy(),
        slice_columns=settings.slice_columns_for(contract),
        slice_gap_tolerance=settings.slice_gap_tolerance,
        min_slice_rows=settings.min_slice_rows,
        max_rows=400,
    )


def self_contained(page: str) -> None:
    """Nothing that needs the network: no script, no stylesheet link, no remote image or font."""
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(", page, re.IGNORECASE)
    assert not re.search(r"(src|href)\s*=", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page


@pytest.mark.parametrize("task", list(TASKS))
def test_the_report_has_every_section_for_each_task(task: str) -> None:
    page = render_report(inputs_for(task))
    self_contained(page)
    for heading in (
        "What the model is for",
        "What data it saw",
        "How well it does, and the decision",
        "Which columns matter most",
        "How the top columns move the score",
        "Results per slice",
    ):
        assert heading in page
    assert ("calibration" in page) == (task != "regression")
    assert "was promoted: it now serves" in page and METRIC[task] in page
    assert page.count("<svg") >= 3  # importance, partial dependence (x several), calibration
    assert "Tenure (months)" in page and "spend/€".replace("/", "/") in page
    assert "Which subscribers leave" in page  # the contract's own description
    assert "coefficients" in page  # the logistic/ridge family's exact importance


@pytest.mark.parametrize("task", list(TASKS))
def test_the_noisy_region_is_flagged_and_the_tolerance_is_the_settings(task: str) -> None:
    inputs = inputs_for(task)
    overall, rows = slices(inputs)
    south = next(r for r in rows if r.column == "region" and r.value == "south")
    north = next(r for r in rows if r.column == "region" and r.value == "north")
    assert south.flagged, (overall, south)
    assert not north.small and south.rows + north.rows == len(inputs.y)
    # Default slice columns: the contract's categories, not the timestamp or a number.
    assert {r.column for r in rows} == {"2nd plan", "region"}
    lenient = inputs_for(task, slice_gap_tolerance=10.0, slice_columns=["region"])
    _, lenient_rows = slices(lenient)
    assert not any(r.flagged for r in lenient_rows) and {r.column for r in lenient_rows} == {"region"}
    page = render_report(inputs)
    assert f"{sum(bool(r.flagged) for r in rows)} slice(s) flagged" in page and "region = south" in page


def test_a_family_without_exact_contributions_gets_permutation_importance() -> None:
    page = render_report(inputs_for("binary", family="svm"))
    self_contained(page)
    assert "permutation importance" in page and "no exact attribution" in page


def test_tree_models_are_explained_with_treeshap_in_the_report() -> None:
    page = render_report(inputs_for("multiclass", family="hist_gradient_boosting"))
    assert "TreeSHAP" in page


def test_report_settings_are_checked_against_the_contract(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import SettingsError, load_settings

    monkeypatch.setenv("MLOPS_CONFIG", "configs/settings.yaml")
    monkeypatch.setenv("MLOPS_CONTRACT_PATH", "configs/fraud/dataset.yaml")
    monkeypatch.setenv("MLOPS_REPORT__SLICE_COLUMNS", '["amount"]')
    with pytest.raises(SettingsError, match=r"report\.slice_columns names 'amount' of type float"):
        load_settings()
    monkeypatch.setenv("MLOPS_REPORT__SLICE_COLUMNS", '["planet"]')
    with pytest.raises(SettingsError, match=r"report\.slice_columns names 'planet', not an input column"):
        load_settings()
    monkeypatch.setenv("MLOPS_REPORT__SLICE_COLUMNS", '["channel"]')
    monkeypatch.setenv("MLOPS_REPORT__SLICE_GAP_TOLERANCE", "-0.1")
    with pytest.raises(SettingsError, match="slice_gap_tolerance"):
        load_settings()
