"""The drift computation on small frames built from the contract: mapping, verdicts, quality, performance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.contract import DatasetContract
from core.settings import Settings
from monitoring.drift import (
    DriftError,
    class_labels,
    column_mapping,
    compute_drift,
    data_quality,
    metrics_for_logging,
    performance,
    run_performance_report,
    sample_rows,
)


@pytest.fixture(scope="module")
def contract() -> DatasetContract:
    return Settings().contract


def contract_frame(contract: DatasetContract, n: int, seed: int, *, shift: float = 0.0) -> pd.DataFrame:
    """Rows with every contract column, values drawn inside the contract; ``shift`` moves numbers up."""
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {}
    for col in contract.columns:
        if col.type == "category":
            cats = list(col.categories or ())
            # A shift also moves mass onto the first category, so categorical columns drift too.
            p = np.full(len(cats), 1 / len(cats))
            if shift:
                p = p * (1 - min(shift, 0.9))
                p[0] += 1 - p.sum()
            data[col.name] = rng.choice(cats, size=n, p=p)
        elif col.type == "string":
            data[col.name] = [f"tx-{seed}-{i}" for i in range(n)]
        elif col.type == "datetime":
            data[col.name] = pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 86_400 * 30, n), unit="s")
        else:
            lo, hi = col.min or 0.0, col.max if col.max is not None else 100.0
            width = min(hi - lo, 100.0)
            values = rng.uniform(lo, lo + width * 0.5, n) + shift * width * 0.5
            data[col.name] = np.clip(np.round(values) if col.type == "int" else values, lo, hi)
    data[contract.target.name] = rng.integers(0, 2, n)
    return pd.DataFrame(data)


def test_mapping_comes_from_the_contract(contract: DatasetContract) -> None:
    m = column_mapping(contract)
    assert set(m["numerical"]) == set(contract.numeric_features)
    assert set(m["categorical"]) == set(contract.categorical_features)
    skipped = {contract.id_column, contract.timestamp_column, contract.target.name}
    assert skipped.isdisjoint(m["numerical"] + m["categorical"])
    with_preds = column_mapping(contract, ["prediction", "probability"])
    assert "probability" in with_preds["numerical"]
    assert "prediction" in with_preds["categorical"]  # a class label, for a binary task


def test_same_distribution_does_not_drift(contract: DatasetContract) -> None:
    ref = contract_frame(contract, 3_000, seed=1)
    win = contract_frame(contract, 2_000, seed=2)
    r = compute_drift(ref, win, contract, reference_sample_rows=2_000, window_sample_rows=2_000)
    assert set(r.columns) == set(contract.feature_columns)
    assert r.drift_share == 0.0 and not r.dataset_drift
    assert r.reference_sample_rows == 2_000 and r.window_sample_rows == 2_000
    # Above 1,000 reference rows Evidently uses distances, the same tests as an unsampled run.
    assert {d.test for d in r.columns.values()} == {"Wasserstein distance (normed)", "Jensen-Shannon distance"}


def test_shifted_window_drifts_and_reports_scores(contract: DatasetContract) -> None:
    ref = contract_frame(contract, 3_000, seed=1)
    win = contract_frame(contract, 2_000, seed=2, shift=0.6)
    win["probability"] = np.linspace(0.5, 1.0, len(win))
    ref["probability"] = np.linspace(0.0, 0.5, len(ref))
    r = compute_drift(ref, win, contract, reference_sample_rows=2_000, window_sample_rows=2_000, drift_share=0.5)
    assert r.drift_share == 1.0 and r.dataset_drift
    assert r.columns["amount"].drifted and r.columns["amount"].score >= r.columns["amount"].threshold
    assert r.prediction_drift and "probability" not in r.columns
    logged = metrics_for_logging(r)
    assert logged["drift_share"] == 1.0
    assert logged["drift_score_amount"] == r.columns["amount"].score
    assert "drift_score_probability" in logged


def test_data_quality_counts_against_the_contract(contract: DatasetContract) -> None:
    win = contract_frame(contract, 100, seed=3)
    win.loc[:4, "amount"] = -1.0  # below min 0
    win.loc[5:6, "txn_count_1h"] = 10_000  # above max 500
    win.loc[:9, "merchant_category"] = "crypto"  # not in the contract's categories
    win.loc[:2, "channel"] = None  # channel is not nullable
    win.loc[:3, "device"] = None  # device is nullable
    q = data_quality(win, contract)
    assert q.rows == 100
    assert q.out_of_range == {"amount": 5, "txn_count_1h": 2}
    assert q.new_category_rows == {"merchant_category": 10}
    assert q.new_categories == {"merchant_category": ["crypto"]}
    assert q.missing["channel"] == 3 and q.missing["device"] == 4
    assert q.unexpected_missing == {"channel": 3}


def test_binary_performance_on_labelled_rows_only(contract: DatasetContract) -> None:
    win = pd.DataFrame(
        {
            "prediction": [1, 0, 1, 0, 1, 0],
            "probability": [0.9, 0.1, 0.8, 0.3, 0.6, 0.2],
            "label": [1.0, 0.0, 1.0, 1.0, np.nan, np.nan],  # floats, as a SQL join leaves them
        }
    )
    p = performance(win, contract)
    assert p is not None and p.labelled_rows == 4
    assert p.metrics["accuracy"] == pytest.approx(0.75)
    assert p.metrics["recall"] == pytest.approx(2 / 3)
    assert p.metrics["roc_auc"] == pytest.approx(1.0)
    assert performance(win.assign(label=np.nan), contract) is None


def test_performance_report_on_labelled_rows(contract: DatasetContract) -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 400)
    proba = np.clip(0.3 * label + rng.uniform(0, 0.7, 400), 0, 1)
    win = pd.DataFrame({"label": label.astype(float), "prediction": (proba >= 0.5).astype(int), "probability": proba})
    win.loc[:99, "label"] = np.nan
    snapshot = run_performance_report(win, contract)
    assert snapshot is not None
    values = {m["metric_name"].split("(")[0]: m["value"] for m in snapshot.dict()["metrics"]}
    expected = performance(win, contract)
    assert expected is not None
    assert values["RocAuc"] == pytest.approx(expected.metrics["roc_auc"])
    assert values["F1Score"] == pytest.approx(expected.metrics["f1"])
    assert run_performance_report(win.assign(label=np.nan), contract) is None


def test_class_labels_unify_storage_types() -> None:
    assert class_labels(pd.Series([1, 1.0, "1", None, "a"], dtype=object)).tolist() == ["1", "1", "1", None, "a"]


def test_sampling_is_seeded_and_bounded() -> None:
    frame = pd.DataFrame({"x": range(1_000)})
    a, b = sample_rows(frame, 100, seed=5), sample_rows(frame, 100, seed=5)
    assert len(a) == 100 and a.index.equals(b.index)
    assert not a.index.equals(sample_rows(frame, 100, seed=6).index)
    assert sample_rows(frame, 5_000, seed=5) is frame


def test_missing_feature_columns_are_refused(contract: DatasetContract) -> None:
    ref = contract_frame(contract, 50, seed=1)
    with pytest.raises(DriftError, match="window lacks the contract's feature columns"):
        compute_drift(ref, ref.drop(columns=["amount"]), contract)
