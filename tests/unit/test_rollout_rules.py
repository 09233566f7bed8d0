"""The rollout's pure parts: the entity hash and the score distance the rollback judges."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from core.settings import load_settings
from serving.model_store import Registry
from serving.prediction_log import PredictionLog
from serving.rollout import Rollout, _Observation, bucket, psi


def test_the_entity_hash_is_stable_and_spreads_evenly() -> None:
    assert bucket("customer-42") == bucket("customer-42")
    values = np.array([bucket(f"c-{i}") for i in range(20_000)])
    assert ((values >= 0) & (values < 1)).all()
    assert abs((values < 0.1).mean() - 0.1) < 0.01
    assert abs((values < 0.5).mean() - 0.5) < 0.02


def test_psi_is_small_for_the_same_distribution_and_large_for_a_collapsed_one() -> None:
    rng = np.random.default_rng(0)
    champion = rng.beta(2, 5, 5_000)
    assert psi(champion, rng.beta(2, 5, 1_000), categorical=False) < 0.05
    assert psi(champion, np.full(1_000, 0.1), categorical=False) > 1.0
    classes = rng.integers(0, 3, 5_000)
    assert psi(classes, rng.integers(0, 3, 1_000), categorical=True) < 0.05
    assert psi(classes, np.zeros(1_000), categorical=True) > 1.0


def test_a_slow_or_failing_canary_is_stopped_and_the_decision_recorded(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLOPS_SERVING__ROLLOUT__MODE", "canary")
    monkeypatch.setenv("MLOPS_SERVING__ROLLOUT__ROLLBACK__MIN_REQUESTS", "20")
    settings = load_settings()
    plog = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", settings.contract, tmp_path / "spool")
    rollout = Rollout(settings, Registry(f"sqlite:///{tmp_path / 'mlflow.db'}"), plog)
    assert rollout.check(None) is None  # nothing observed: nothing judged
    now = time.monotonic()
    for i in range(19):
        rollout._window.append(_Observation(now, "canary", 900.0, i % 2 == 0, None))
    assert rollout.check(None) is None  # fewer than min_requests
    rollout._window.append(_Observation(now, "canary", 900.0, False, None))
    decision = rollout.check(None)
    assert decision is not None and sorted(decision["limits"]) == ["error_rate", "p99_ms"]
    assert "error rate 0.500 > 0.02" in decision["reason"] and "p99 latency 900.0 ms > 250.0 ms" in decision["reason"]
    assert (rollout.state.mode, rollout.state.canary_share) == ("off", 0.0)
    assert rollout.decisions()[-1]["reason"] == decision["reason"]
    shared = json.loads((settings.state / "serving" / "rollout.json").read_text())
    assert (shared["mode"], shared["canary_share"]) == ("off", 0.0)
    # Another worker (same settings) adopts the stopped state from the file.
    other = Rollout(settings, Registry(f"sqlite:///{tmp_path / 'mlflow.db'}"), plog)
    assert other.state.mode == "off"
