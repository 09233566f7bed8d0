"""The promotion gate's rule, on synthetic scores whose quality is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from core.modeling.gate import GateConfig, baseline_scores, decide, paired_bootstrap

N = 4000


def _labels(seed: int = 11, rate: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).random(N) < rate).astype(int)


def _scores(y: np.ndarray, signal: float, seed: int) -> np.ndarray:
    """Probabilities whose separation of the classes grows with `signal`."""
    rng = np.random.default_rng(seed)
    logit = signal * (2 * y - 1) + rng.normal(0, 1, len(y))
    return 1 / (1 + np.exp(-logit))


def _masks(n: int = N) -> dict[str, np.ndarray]:
    idx = np.arange(n)
    return {"channel=pos": idx % 2 == 0, "channel=online": idx % 2 == 1}


CONFIG = GateConfig(n_bootstrap=300, min_slice_rows=200, slice_tolerance=0.05, latency_budget_ms=20)


def test_clearly_better_candidate_is_promoted() -> None:
    y = _labels()
    d = decide(
        "binary", y, _scores(y, 2.0, 1), _scores(y, 0.8, 2),
        against="champion", latency_ms=3.0, masks=_masks(), config=CONFIG,
    )  # fmt: skip
    assert d.decision == "promoted", d.reason
    assert d.ci_low > 0 and d.ci_low <= d.delta <= d.ci_high
    assert d.candidate_score > d.reference_score
    assert {s.name for s in d.slices} == {"channel=pos", "channel=online"}


def test_candidate_no_better_than_champion_becomes_challenger() -> None:
    y = _labels()
    champion = _scores(y, 1.5, 1)
    d = decide(
        "binary", y, champion.copy(), champion, against="champion", latency_ms=3.0, masks=_masks(), config=CONFIG
    )
    assert d.decision == "challenger"
    assert (d.ci_low, d.ci_high) == (0.0, 0.0)  # identical models: the paired difference is exactly 0
    assert "does not clear the minimum" in d.reason


def test_worse_candidate_becomes_challenger() -> None:
    y = _labels()
    d = decide(
        "binary", y, _scores(y, 0.8, 2), _scores(y, 2.0, 1),
        against="champion", latency_ms=3.0, masks=_masks(), config=CONFIG,
    )  # fmt: skip
    assert d.decision == "challenger"
    assert d.delta < 0 and d.ci_high < 0


def test_minimum_improvement_must_be_cleared() -> None:
    y = _labels()
    cand, champ = _scores(y, 2.0, 1), _scores(y, 1.6, 2)
    lenient = decide("binary", y, cand, champ, against="champion", latency_ms=3.0, masks=_masks(), config=CONFIG)
    strict_cfg = GateConfig(**{**CONFIG.__dict__, "min_improvement": 0.5})
    strict = decide("binary", y, cand, champ, against="champion", latency_ms=3.0, masks=_masks(), config=strict_cfg)
    assert lenient.decision == "promoted", lenient.reason
    assert strict.decision == "challenger"
    assert "+0.5000" in strict.reason


def test_slice_regression_blocks_promotion() -> None:
    y = _labels()
    masks = _masks()
    champion = _scores(y, 1.5, 1)
    candidate = _scores(y, 3.0, 2)
    # Much better on pos, but no better than noise on online.
    online = masks["channel=online"]
    candidate[online] = np.random.default_rng(3).random(int(online.sum()))
    d = decide("binary", y, candidate, champion, against="champion", latency_ms=3.0, masks=masks, config=CONFIG)
    regressed = [s.name for s in d.slices if s.regressed]
    assert regressed == ["channel=online"]
    assert d.decision == "challenger"
    assert "channel=online" in d.reason


def test_small_slices_are_not_judged() -> None:
    y = _labels()
    masks = {"tiny": np.arange(N) < 50, **_masks()}
    d = decide(
        "binary", y, _scores(y, 2.0, 1), _scores(y, 0.8, 2),
        against="champion", latency_ms=3.0, masks=masks, config=CONFIG,
    )  # fmt: skip
    assert "tiny" not in {s.name for s in d.slices}


def test_latency_budget_blocks_promotion() -> None:
    y = _labels()
    d = decide(
        "binary", y, _scores(y, 2.0, 1), _scores(y, 0.8, 2),
        against="champion", latency_ms=35.0, masks=_masks(), config=CONFIG,
    )  # fmt: skip
    assert d.decision == "challenger"
    assert "latency 35.0 ms exceeds" in d.reason


def test_first_model_must_beat_the_trivial_baseline() -> None:
    y = _labels()
    base = baseline_scores("binary", y, N)
    assert np.allclose(base, y.mean(), atol=1e-8)
    good = decide(
        "binary", y, _scores(y, 1.5, 1), base, against="baseline", latency_ms=3.0, masks=_masks(), config=CONFIG
    )
    assert good.decision == "promoted", good.reason
    noise = np.random.default_rng(5).random(N)
    bad = decide("binary", y, noise, base, against="baseline", latency_ms=3.0, masks=_masks(), config=CONFIG)
    assert bad.decision == "rejected"
    assert "baseline" in bad.reason


def test_lower_is_better_metric_flips_the_sign() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(100, 10, N)
    good, bad = y + rng.normal(0, 1, N), y + rng.normal(0, 5, N)
    cfg = GateConfig(primary_metric="rmse", n_bootstrap=200, min_slice_rows=200)
    d = decide("regression", y, good, bad, against="champion", latency_ms=1.0, masks=_masks(), config=cfg)
    assert d.decision == "promoted", d.reason
    assert d.delta > 0  # positive means better, whatever the metric's direction
    assert baseline_scores("regression", y, 3).tolist() == pytest.approx([y.mean()] * 3)


def test_bootstrap_is_seeded_and_brackets_the_point_estimate() -> None:
    y = _labels()
    a, b = _scores(y, 1.5, 1), _scores(y, 1.2, 2)
    first = paired_bootstrap("binary", "pr_auc", y, a, b, n_bootstrap=200, seed=7)
    again = paired_bootstrap("binary", "pr_auc", y, a, b, n_bootstrap=200, seed=7)
    other = paired_bootstrap("binary", "pr_auc", y, a, b, n_bootstrap=200, seed=8)
    assert first == again
    assert first != other
    point, low, high = first
    assert low < point < high


def _decision(kind: str) -> object:
    from core.modeling.gate import Decision

    return Decision(
        decision=kind,  # type: ignore[arg-type]
        reason=f"test: {kind}",
        against="champion",
        primary_metric="pr_auc",
        candidate_score=0.6,
        reference_score=0.5,
        delta=0.1,
        ci_low=0.05,
        ci_high=0.15,
        latency_ms=2.0,
    )


def test_aliases_follow_decisions_and_rollback_restores_an_earlier_version(tmp_path: object) -> None:
    """Registry side of the gate on a real (local SQLite) MLflow registry: no server needed."""
    from pathlib import Path

    import mlflow
    from mlflow.tracking import MlflowClient

    from core.registry import aliases as registry

    root = Path(str(tmp_path))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    name = "gate-unit"
    client.create_registered_model(name)
    versions = [str(client.create_model_version(name, source=str(root / f"m{i}")).version) for i in range(3)]

    def alias(a: str) -> str | None:
        mv = registry.version_by_alias(name, a, client)
        return None if mv is None else str(mv.version)

    registry.apply_decision(name, versions[0], _decision("promoted"), "# card v1", mlflow_client=client)
    assert alias("champion") == versions[0] and alias("previous-champion") is None
    registry.apply_decision(name, versions[1], _decision("challenger"), "# card v2", mlflow_client=client)
    assert alias("champion") == versions[0] and alias("challenger") == versions[1]
    registry.apply_decision(name, versions[2], _decision("promoted"), "# card v3", mlflow_client=client)
    assert alias("champion") == versions[2] and alias("previous-champion") == versions[0]
    v3 = client.get_model_version(name, versions[2])
    assert v3.tags["decision"] == "promoted" and v3.tags["ci_low"] == "0.050000"
    assert v3.description == "# card v3"

    result = registry.rollback(name, versions[0], "v3 doubles false alarms", client)
    assert result == {"champion": versions[0], "previous_champion": versions[2]}
    assert alias("champion") == versions[0] and alias("previous-champion") == versions[2]
    v1 = client.get_model_version(name, versions[0])
    assert v1.tags["decision"] == "rollback" and v1.tags["reason"] == "v3 doubles false alarms"
    assert "## Rollback" in v1.description
    assert client.get_model_version(name, versions[2]).tags["rolled_back_reason"] == "v3 doubles false alarms"
    with pytest.raises(ValueError, match="already the champion"):
        registry.rollback(name, versions[0], "again", client)
