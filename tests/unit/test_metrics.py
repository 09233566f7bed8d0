"""Metrics by task, per slice, the threshold choice, and the fast weighted ranking metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from core.modeling.catalogue import higher_is_better, metric_names
from core.modeling.metrics import (
    RankedScores,
    check_primary_metric,
    choose_threshold,
    compute_metrics,
    slice_masks,
    slice_metrics,
    weighted_metric,
)
from core.settings import get_settings


def _binary(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.05).astype(int)
    score = 1 / (1 + np.exp(-(2.5 * y - 3 + rng.normal(0, 1, n))))
    return y, score


def test_binary_metrics_match_sklearn() -> None:
    y, s = _binary()
    m = compute_metrics("binary", y, s, threshold=0.3)
    assert set(m) == set(metric_names("binary"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    assert m["f1"] == pytest.approx(f1_score(y, s >= 0.3))
    assert m["brier"] == pytest.approx(np.mean((s - y) ** 2))


def test_ranking_metrics_are_nan_with_one_class() -> None:
    m = compute_metrics("binary", np.zeros(10, dtype=int), np.linspace(0, 1, 10))
    assert np.isnan(m["roc_auc"]) and np.isnan(m["pr_auc"])


def test_regression_metrics() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    m = compute_metrics("regression", y, y + np.array([1.0, -1.0, 1.0, -1.0]))
    assert {k: m[k] for k in ("rmse", "mae", "r2")} == pytest.approx({"rmse": 1.0, "mae": 1.0, "r2": 1 - 4 / 5})
    assert not higher_is_better("rmse") and higher_is_better("r2")


def test_threshold_maximises_f1_on_the_data_it_is_chosen_on() -> None:
    y, s = _binary(n=1000, seed=1)
    t = choose_threshold(y, s)
    best = max(f1_score(y, s >= c) for c in np.unique(s))
    assert f1_score(y, s >= t) == pytest.approx(best)
    assert f1_score(y, s >= t) > f1_score(y, s >= 0.5)  # the default is not right for a 5% target


def test_slice_metrics_per_value_and_minimum_rows() -> None:
    contract = get_settings().contract
    y, s = _binary(n=2000)
    frame = pd.DataFrame(
        {
            "channel": np.where(np.arange(2000) < 1900, "pos", "atm"),
            "country": ["DE"] * 1000 + ["FR"] * 1000,
        }
    )
    masks = slice_masks(frame, contract)
    assert set(masks) == {"channel=pos", "channel=atm", "country=DE", "country=FR"}
    out = slice_metrics("binary", y, s, masks, threshold=0.5, min_rows=200)
    assert "channel=atm" not in out  # 100 rows: below the minimum
    assert out["country=DE"]["rows"] == 1000
    assert out["country=DE"]["roc_auc"] == pytest.approx(roc_auc_score(y[:1000], s[:1000]))


@pytest.mark.parametrize("ties", [False, True])
def test_ranked_scores_match_sklearn_with_weights(ties: bool) -> None:
    y, s = _binary(n=5000, seed=2)
    if ties:
        s = np.round(s, 2)  # many tied scores: thresholds must sit between groups
    ranked = RankedScores(y, s)
    rng = np.random.default_rng(3)
    for _ in range(3):
        w = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y))
        assert ranked.average_precision(w) == pytest.approx(average_precision_score(y, s, sample_weight=w))
        assert ranked.roc_auc(w) == pytest.approx(roc_auc_score(y, s, sample_weight=w))
        assert weighted_metric("binary", "pr_auc", y, s, w, threshold=0.5) == pytest.approx(ranked.average_precision(w))


def test_weighted_regression_metric() -> None:
    y = np.array([1.0, 2.0, 3.0])
    pred = np.array([2.0, 2.0, 3.0])
    w = np.array([2, 0, 1])
    assert weighted_metric("regression", "rmse", y, pred, w, threshold=0.5) == pytest.approx(np.sqrt(2 / 3))
    assert weighted_metric("regression", "mae", y, pred, w, threshold=0.5) == pytest.approx(2 / 3)


def test_primary_metric_must_fit_the_task() -> None:
    check_primary_metric("binary", "pr_auc")
    check_primary_metric("regression", "rmse")
    with pytest.raises(ValueError, match="does not apply to task regression"):
        check_primary_metric("regression", "pr_auc")
