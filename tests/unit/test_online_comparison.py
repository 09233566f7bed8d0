"""The online comparison's statistics (core/modeling/online.py) and the gate's online requirement, on
synthetic prediction-log rows whose quality is known by construction: binary, multiclass, regression."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.contract import DatasetContract
from core.modeling.gate import GateConfig, OnlineEvidence, OnlineRequirement, decide
from core.modeling.online import agreement_rate, compare, jensen_shannon, paired_improvement
from tests.scoring_support import CONTRACTS

N = 1_500
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _contract(task: str) -> DatasetContract:
    return DatasetContract.model_validate(CONTRACTS[task])


def _log(task: str, champion_noise: float, challenger_noise: float, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Champion rows (v1) and shadow rows (v2) with the same request ids, and a label per request. A lower
    noise is a better model."""
    rng = np.random.default_rng(seed)
    ids = [f"r{i}" for i in range(N)]
    frames = []
    if task == "binary":
        y = rng.random(N) < 0.3
        labels = pd.Series(np.where(y, "yes", "no"), index=ids)
    elif task == "multiclass":
        y_idx = rng.integers(0, 3, N)
        labels = pd.Series(np.asarray(["a", "b", "c"])[y_idx], index=ids)
    else:
        y_val = rng.uniform(50, 250, N)
        labels = pd.Series(y_val, index=ids)
    for role, version, noise, latency in (
        ("champion", "1", champion_noise, 3.0),
        ("shadow", "2", challenger_noise, 9.0),
    ):
        frame = pd.DataFrame(
            {
                "request_id": ids,
                "model_name": "m",
                "model_version": version,
                "timestamp": [T0 + timedelta(seconds=i) for i in range(N)],
                "latency_ms": rng.gamma(2.0, latency / 2.0, N),
                "role": role,
            }
        )
        if task == "binary":
            p = 1 / (1 + np.exp(-((2 * y - 1) * 2.0 + rng.normal(0, noise, N))))
            frame["probability"] = p
            frame["prediction"] = np.where(p >= 0.5, "yes", "no")
        elif task == "multiclass":
            logits = np.eye(3)[y_idx] * 2.0 + rng.normal(0, noise, (N, 3))
            proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            for k, c in enumerate("abc"):
                frame[f"p_{c}"] = proba[:, k]
            frame["prediction"] = np.asarray(list("abc"))[proba.argmax(axis=1)]
        else:
            frame["prediction"] = y_val + rng.normal(0, noise, N)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), labels


NOISE = {"binary": (2.5, 1.0), "multiclass": (2.5, 0.8), "regression": (30.0, 5.0)}
METRIC = {"binary": "roc_auc", "multiclass": "f1_macro", "regression": "rmse"}


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_better_challenger_shows_a_positive_interval(task: str) -> None:
    worse, better = NOISE[task]
    rows, labels = _log(task, champion_noise=worse, challenger_noise=better)
    c = compare(rows, labels, _contract(task), METRIC[task], n_bootstrap=200)
    assert (c.champion_version, c.challenger_version) == ("1", "2")
    assert c.paired_rows == N and c.labelled_pairs == N
    assert set(c.roles) == {"champion", "shadow"}
    assert c.roles["shadow"].latency_p50_ms > c.roles["champion"].latency_p50_ms
    assert c.roles["shadow"].latency_p99_ms >= c.roles["shadow"].latency_p50_ms
    assert 0 <= c.roles["shadow"].score_distance <= 1  # type: ignore[operator]
    assert 0 < c.agreement < 1  # type: ignore[operator]
    assert c.ci_low is not None and c.ci_high is not None and c.delta is not None
    assert 0 < c.ci_low <= c.delta <= c.ci_high, c
    if task == "regression":  # lower is better: the challenger's rmse is lower, the improvement positive
        assert c.challenger_metric < c.champion_metric  # type: ignore[operator]
    else:
        assert c.challenger_metric > c.champion_metric  # type: ignore[operator]
    assert c.evidence().labelled_pairs == N and c.metrics()["delta"] == pytest.approx(c.delta)


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_paired_bootstrap_direction_follows_the_metric(task: str) -> None:
    """Swapping the models flips the sign; a lower-is-better metric (log_loss, mae) is flipped too."""
    worse, better = NOISE[task]
    rows, labels = _log(task, champion_noise=better, challenger_noise=worse)
    for metric in ("log_loss", "roc_auc") if task == "binary" else ("mae", "r2"):
        c = compare(rows, labels, _contract(task), metric, n_bootstrap=200)
        assert c.ci_high is not None and c.ci_high < 0, (metric, c)


def test_identical_models_agree_and_do_not_differ() -> None:
    rows, labels = _log("binary", 1.0, 1.0)
    champion = rows[rows["role"] == "champion"]
    same = champion.assign(role="shadow", model_version="2")
    c = compare(pd.concat([champion, same]), labels, _contract("binary"), "roc_auc", n_bootstrap=100)
    assert c.agreement == 1.0
    assert c.roles["shadow"].score_distance == pytest.approx(0.0)
    assert c.delta == 0.0 and c.ci_low == 0.0 and c.ci_high == 0.0


def test_without_labels_or_shadow_the_comparison_says_so() -> None:
    rows, _ = _log("multiclass", 1.0, 1.0)
    c = compare(rows, None, _contract("multiclass"), "f1_macro")
    assert c.paired_rows == N and c.labelled_pairs == 0 and c.delta is None
    assert any("no feedback labels" in n for n in c.notes)
    canary = rows.assign(role=np.where(rows["role"] == "shadow", "canary", rows["role"]))
    canary.loc[canary["role"] == "canary", "request_id"] += "-c"  # a canary answers other requests
    c = compare(canary, None, _contract("multiclass"), "f1_macro")
    assert c.paired_rows == 0 and "canary" in c.roles and c.roles["canary"].rows == N
    assert any("no shadowed requests" in n for n in c.notes)
    c = compare(rows[rows["role"] == "champion"], None, _contract("multiclass"), "f1_macro")
    assert c.challenger_version is None and any("no shadow or canary" in n for n in c.notes)


def test_an_empty_window_is_a_note_not_an_error(tmp_path: Any) -> None:
    from core.modeling.online import read_online

    rows, labels = read_online(f"sqlite:///{tmp_path / 'none.db'}")
    c = compare(rows, labels, _contract("regression"), "rmse")
    assert c.paired_rows == 0 and c.notes == ["no predictions in the window"]
    assert c.evidence().labelled_pairs == 0


def test_agreement_and_distance() -> None:
    assert agreement_rate("regression", np.array([100.0, 100.0]), np.array([104.0, 110.0]), 0.05) == 0.5
    assert agreement_rate("binary", np.array([1, 0, 1, 1]), np.array([1, 1, 1, 1])) == 0.75
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 5_000)
    assert jensen_shannon(a, rng.normal(0, 1, 5_000), categorical=False) < 0.05
    assert jensen_shannon(a, rng.normal(3, 1, 5_000), categorical=False) > 0.7
    assert jensen_shannon(np.array([0, 0, 1]), np.array([2, 2, 2]), categorical=True) == pytest.approx(1.0)


def test_paired_improvement_is_paired() -> None:
    """Two models that differ by a little on every row: the paired interval is tight and excludes 0."""
    rng = np.random.default_rng(1)
    y = rng.uniform(0, 10, 2_000)
    champion = y + rng.normal(0, 3, 2_000)
    challenger = y + 0.95 * (champion - y)  # 5% less error on every row
    point, low, high = paired_improvement("regression", "mae", y, challenger, champion, n_bootstrap=200)
    assert 0 < low <= point <= high


# ---- the gate -----------------------------------------------------------------------------------------
def _decide(online: OnlineEvidence | None, need: OnlineRequirement | None, against: Any = "champion") -> Any:
    rng = np.random.default_rng(3)
    y = (rng.random(3_000) < 0.2).astype(int)
    better = 1 / (1 + np.exp(-(3.0 * (2 * y - 1) + rng.normal(0, 1, 3_000))))
    worse = 1 / (1 + np.exp(-(1.0 * (2 * y - 1) + rng.normal(0, 1, 3_000))))
    config = GateConfig(primary_metric="roc_auc", n_bootstrap=100, latency_budget_ms=50, require_online=need)
    return decide("binary", y, better, worse, against=against, latency_ms=1.0, masks={}, config=config, online=online)


def _evidence(pairs: int, low: float, delta: float = 0.01) -> OnlineEvidence:
    return OnlineEvidence("2", "1", "roc_auc", pairs, delta, low, delta + 0.01, 0.95)


NEED = OnlineRequirement(min_labelled_rows=300, confidence=0.95)


def test_gate_promotes_on_good_online_evidence() -> None:
    d = _decide(_evidence(500, 0.001), NEED)
    assert d.decision == "promoted", d.reason
    assert "online roc_auc" in d.reason and d.online is not None


def test_gate_keeps_a_challenger_that_may_be_worse_online() -> None:
    d = _decide(_evidence(500, -0.02, delta=-0.005), NEED)
    assert d.decision == "challenger"
    assert "may be worse than the champion" in d.reason


def test_gate_refuses_too_few_labels_or_no_evidence() -> None:
    d = _decide(_evidence(120, 0.05), NEED)
    assert d.decision == "challenger"
    assert "too few labelled online requests: 120 < gate.require_online.min_labelled_rows 300" in d.reason
    d = _decide(None, NEED)
    assert d.decision == "challenger" and "no online evidence" in d.reason


def test_gate_without_requirement_or_champion_ignores_online() -> None:
    assert _decide(None, None).decision == "promoted"
    assert _decide(None, NEED, against="baseline").decision == "promoted"  # nothing online to compare with
