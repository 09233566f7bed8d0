"""Behavioural tests of the default model, trained once per session by the `train` flow.

Directional: much higher velocity raises the fraud probability. Invariance: the id column does not
change the output. Minimum functionality: clear-cut cases land on the right side of the stored
threshold, and the model ranks fraud far better than chance on the holdout.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.training_support import SMALL_DATA_ENV, build_processed_data


@dataclass
class TrainedModel:
    model: Any
    threshold: float
    holdout: pd.DataFrame
    contract: Any

    def proba(self, frame: pd.DataFrame) -> np.ndarray:
        from core.modeling.features import to_model_input

        return np.asarray(self.model.predict_proba(to_model_input(frame, self.contract))[:, 1])


@pytest.fixture(scope="module")  # its settings stay in the environment while it lives: not beyond this module
def trained(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedModel]:
    """The default families on ~27k simulated rows, through the real flow, loaded back from the registry."""
    import mlflow

    from core.data.datasets import latest_processed
    from core.registry.artefact import load_version
    from core.settings import get_settings
    from pipelines.train import train

    name = f"behaviour-{uuid.uuid4().hex[:8]}"
    env = {
        **SMALL_DATA_ENV,
        "MLOPS_SIMULATOR__DAYS": "30",
        "MLOPS_TRAINING__CV_FOLDS": "2",
        "MLOPS_STATE_DIR": str(tmp_path_factory.mktemp("behaviour") / "state"),
        "MLOPS_ENVIRONMENT": "test",
        "MLOPS_MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLOPS_MODEL_NAME": name,
        "MLOPS_EXPERIMENT_NAME": name,
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        build_processed_data()
        result = train()
        assert result.decision is not None and result.decision["decision"] == "promoted"
        uri = f"models:/{name}@champion"
        info = mlflow.models.get_model_info(uri)
        yield TrainedModel(
            model=load_version(uri)[0],  # the project's own loader (skops, trust list)
            threshold=float(info.metadata["threshold"]),
            holdout=latest_processed(get_settings()).load("holdout"),
            contract=get_settings().contract,
        )


def _clear_cut(kind: str, n: int = 20) -> pd.DataFrame:
    fraud = kind == "fraud"
    return pd.DataFrame(
        {
            "transaction_id": [f"tx-{kind}-{i}" for i in range(n)],
            "event_time": pd.date_range("2026-02-01 02:00" if fraud else "2026-02-01 12:00", periods=n, freq="1min"),
            "amount": [1800.0 if fraud else 25.0] * n,
            "merchant_category": ["digital_goods" if fraud else "grocery"] * n,
            "channel": ["online" if fraud else "pos"] * n,
            "country": ["OTHER" if fraud else "DE"] * n,
            "device": ["mobile" if fraud else "terminal"] * n,
            "customer_tenure_days": [3 if fraud else 3000] * n,
            "txn_count_1h": [15 if fraud else 0] * n,
            "txn_count_24h": [40 if fraud else 2] * n,
            "amount_sum_24h": [9000.0 if fraud else 60.0] * n,
            "distance_from_home_km": [4000.0 if fraud else 2.0] * n,
        }
    )


def test_directional_much_higher_velocity_raises_fraud_probability(trained: TrainedModel) -> None:
    base = trained.holdout.head(500).copy()
    faster = base.copy()
    faster["txn_count_1h"] = base["txn_count_1h"] + 10
    faster["txn_count_24h"] = base["txn_count_24h"] + 10
    before, after = trained.proba(base), trained.proba(faster)
    assert np.mean(after > before) >= 0.95
    assert after.mean() > 2 * before.mean()


def test_invariance_the_id_column_does_not_change_the_output(trained: TrainedModel) -> None:
    rows = trained.holdout.head(300).copy()
    renamed = rows.copy()
    renamed["transaction_id"] = [f"other-{i}" for i in range(len(rows))][::-1]
    np.testing.assert_array_equal(trained.proba(rows), trained.proba(renamed))


def test_minimum_functionality_on_clear_cut_cases(trained: TrainedModel) -> None:
    assert (trained.proba(_clear_cut("fraud")) >= trained.threshold).all()
    assert (trained.proba(_clear_cut("legit")) < trained.threshold).all()


def test_minimum_functionality_ranks_fraud_well_above_chance(trained: TrainedModel) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = trained.holdout["is_fraud"].astype(int).to_numpy()
    p = trained.proba(trained.holdout)
    assert roc_auc_score(y, p) > 0.8
    assert average_precision_score(y, p) > 5 * y.mean()
