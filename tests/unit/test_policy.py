"""The retraining policy: each rule alone, the cooldown, and the reasons every decision carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.settings import MonitoringSettings
from monitoring import decisions
from monitoring.policy import Evidence, RetrainPolicy, decide, weighted_drift_share

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
COLUMNS = ["amount", "channel", "country", "device", "txn_count_1h"]


def evidence(drifted: tuple[str, ...] = (), **kw: object) -> Evidence:
    base: dict[str, object] = {"window_rows": 5_000, "column_drift": {c: c in drifted for c in COLUMNS}}
    base.update(kw)
    return Evidence(**base)  # type: ignore[arg-type]


def test_no_drift_no_retrain_and_says_why() -> None:
    d = decide(evidence(), RetrainPolicy(), now=NOW)
    assert not d.retrain
    assert d.fired == []
    assert d.weighted_drift_share == 0.0
    assert any("weighted drift share 0.000 < threshold" in r for r in d.reasons)


def test_drift_share_at_threshold_fires() -> None:
    policy = RetrainPolicy(drift_share_threshold=0.4)
    d = decide(evidence(("amount", "channel")), policy, now=NOW)  # 2 of 5 = 0.4
    assert d.retrain and d.fired == ["drift"]
    assert "['amount', 'channel']" in d.reason


def test_column_weights_change_the_verdict() -> None:
    flat = RetrainPolicy(drift_share_threshold=0.3)
    weighted = RetrainPolicy(drift_share_threshold=0.3, column_weights={"amount": 3.0})
    ev = evidence(("amount",))
    assert weighted_drift_share(ev.column_drift, flat) == pytest.approx(0.2)
    assert weighted_drift_share(ev.column_drift, weighted) == pytest.approx(3 / 7)
    assert not decide(ev, flat, now=NOW).retrain
    assert decide(ev, weighted, now=NOW).retrain


def test_zero_weight_ignores_a_column() -> None:
    policy = RetrainPolicy(drift_share_threshold=0.1, column_weights={"device": 0.0})
    assert not decide(evidence(("device",)), policy, now=NOW).retrain


def test_too_little_data_never_retrains_even_with_drift() -> None:
    d = decide(evidence(tuple(COLUMNS), window_rows=10), RetrainPolicy(min_window_rows=100), now=NOW)
    assert not d.retrain
    assert d.reasons == ["too little data: 10 window rows < min_window_rows 100"]


def test_performance_drop_beyond_limit_fires() -> None:
    policy = RetrainPolicy(performance_metric="pr_auc", max_performance_drop=0.05, min_labelled_rows=100)
    worse = evidence(labelled_rows=500, performance={"pr_auc": 0.60}, champion_performance=0.70)
    within = evidence(labelled_rows=500, performance={"pr_auc": 0.67}, champion_performance=0.70)
    d = decide(worse, policy, now=NOW)
    assert d.retrain and d.fired == ["performance"]
    assert d.performance_drop == pytest.approx(0.10 / 0.70)  # relative to the champion: 14% worse
    assert not decide(within, policy, now=NOW).retrain  # 4% worse, within 5%


def test_lower_is_better_metric_drop_has_the_right_sign() -> None:
    policy = RetrainPolicy(performance_metric="rmse", max_performance_drop=0.2, min_labelled_rows=10)
    d = decide(evidence(labelled_rows=50, performance={"rmse": 14.0}, champion_performance=10.0), policy, now=NOW)
    assert d.performance_drop == pytest.approx(0.4)
    assert d.retrain
    better = decide(evidence(labelled_rows=50, performance={"rmse": 9.0}, champion_performance=10.0), policy, now=NOW)
    assert better.performance_drop == pytest.approx(-0.1) and not better.retrain


def test_the_drop_is_relative_so_one_setting_fits_any_metric_scale() -> None:
    # rmse around 50: noise of 1 unit is 2%, within the default 5%; in metric units it would have fired.
    policy = RetrainPolicy(performance_metric="rmse", max_performance_drop=0.05, min_labelled_rows=10)
    d = decide(evidence(labelled_rows=50, performance={"rmse": 51.0}, champion_performance=50.0), policy, now=NOW)
    assert d.performance_drop == pytest.approx(0.02) and not d.retrain


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"labelled_rows": 5, "performance": {"pr_auc": 0.1}, "champion_performance": 0.9}, "labelled rows"),
        ({"labelled_rows": 500, "performance": {}, "champion_performance": 0.9}, "could not be computed"),
        ({"labelled_rows": 500, "performance": {"pr_auc": 0.1}}, "no recorded holdout"),
    ],
)
def test_performance_not_judged_without_enough_evidence(kw: dict[str, object], says: str) -> None:
    d = decide(evidence(**kw), RetrainPolicy(min_labelled_rows=100), now=NOW)
    assert not d.retrain
    assert d.performance_drop is None
    assert any(says in r for r in d.reasons)


def test_prediction_drift_triggers_only_when_configured() -> None:
    ev = evidence(prediction_drift=True)
    assert not decide(ev, RetrainPolicy(), now=NOW).retrain
    d = decide(ev, RetrainPolicy(prediction_drift_triggers=True), now=NOW)
    assert d.retrain and d.fired == ["prediction_drift"]


def test_cooldown_holds_a_firing_rule_back_then_releases_it() -> None:
    policy = RetrainPolicy(drift_share_threshold=0.2, cooldown_hours=24)
    ev = evidence(("amount", "channel"))
    held = decide(ev, policy, now=NOW, last_trigger_at=NOW - timedelta(hours=3))
    assert not held.retrain and held.held_by_cooldown and held.fired == ["drift"]
    assert any(r.startswith("cooldown:") for r in held.reasons)
    released = decide(ev, policy, now=NOW, last_trigger_at=NOW - timedelta(hours=25))
    assert released.retrain and not released.held_by_cooldown


def test_policy_from_settings() -> None:
    s = MonitoringSettings(drift_share_threshold=0.25, column_weights={"amount": 2}, cooldown_hours=6)
    p = RetrainPolicy.from_settings(s)
    assert (p.drift_share_threshold, p.weight("amount"), p.weight("other"), p.cooldown_hours) == (0.25, 2.0, 1.0, 6)


def test_last_trigger_counts_only_sent_triggers(tmp_path: Path) -> None:
    path = tmp_path / "monitoring" / "decisions.jsonl"
    assert decisions.last_trigger_at(path) is None
    sent = NOW - timedelta(hours=5)
    decisions.record_decision(path, {"decided_at": sent.isoformat(), "retrain": True, "triggered": True})
    # Decided later but never sent (no Prefect): must not restart the cooldown.
    decisions.record_decision(path, {"decided_at": NOW.isoformat(), "retrain": True, "triggered": False})
    assert decisions.last_trigger_at(path) == sent
    assert len(decisions.read_decisions(path)) == 2
