"""The rollout's pure parts: the entity hash and the score distance the rollback judges."""

from __future__ import annotations

import numpy as np

from serving.rollout import bucket, psi


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
