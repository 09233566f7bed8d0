"""Model families: each is the contract's preprocessor plus an estimator, saved with skops and an
explicit list of trusted types (never pickle), for classification and regression."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import skops.io as sio
import yaml
from sklearn.pipeline import Pipeline

from core.contract import DatasetContract, parse_contract
from core.modeling.families import FAMILIES, build_pipeline, families_for, params_from_optuna, suggest
from core.modeling.features import to_model_input
from core.registry.artefact import trusted_types
from core.settings import PROJECT_ROOT, get_settings
from demo.simulator import simulate

# Small versions of the expensive families: these tests check structure and serialisation, not quality.
FAST = {"random_forest": {"n_estimators": 10}, "hist_gradient_boosting": {"max_iter": 20}, "mlp": {"max_iter": 5}}


@pytest.fixture(scope="module")
def frame() -> object:
    return simulate(3000, seed=1, days=3, rows_per_day=1000, true_labels=True, wrong_types=False)


def _regression_contract() -> DatasetContract:
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "fraud" / "dataset.yaml").read_text())
    raw["task"] = "regression"
    raw["target"] = {"name": "amount"}
    return parse_contract(raw)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("task", ["binary", "regression"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_fits_and_round_trips_through_skops_with_its_trusted_types(family: str, task: str, frame) -> None:  # type: ignore[no-untyped-def]
    contract = get_settings().contract if task == "binary" else _regression_contract()
    pipe = build_pipeline(contract, family, FAST.get(family), seed=0)
    assert isinstance(pipe, Pipeline) and [name for name, _ in pipe.steps] == ["preprocess", "model"]
    X = to_model_input(frame, contract)
    y = frame[contract.target.name].astype(int if task == "binary" else float).to_numpy()
    pipe.fit(X, y)

    blob = sio.dumps(pipe)
    untrusted = set(sio.get_untrusted_types(data=blob))
    assert untrusted <= set(trusted_types(family)), (
        f"{family}: trust list misses {untrusted - set(trusted_types(family))}"
    )
    loaded = sio.loads(blob, trusted=list(trusted_types(family)))
    method = "predict_proba" if task == "binary" else "predict"
    np.testing.assert_array_equal(getattr(loaded, method)(X.head(50)), getattr(pipe, method)(X.head(50)))


def test_an_unlisted_type_is_refused(frame) -> None:  # type: ignore[no-untyped-def]
    contract = get_settings().contract
    pipe = build_pipeline(contract, "random_forest", FAST["random_forest"]).fit(
        to_model_input(frame, contract), frame["is_fraud"].astype(int)
    )
    with pytest.raises(sio.exceptions.UntrustedTypesFoundException):
        sio.loads(sio.dumps(pipe), trusted=list(trusted_types("logistic")))


def test_svm_is_skipped_above_its_row_limit() -> None:
    keep, skipped = families_for(["logistic", "svm"], n_train_rows=500_000, svm_max_rows=200_000)
    assert keep == ["logistic"] and "svm" in skipped
    keep, skipped = families_for(["logistic", "svm"], n_train_rows=10_000, svm_max_rows=200_000)
    assert keep == ["logistic", "svm"] and not skipped
    with pytest.raises(ValueError, match="unknown model family"):
        families_for(["xgboost"], 10, 10)


def test_search_space_params_map_back_to_family_params() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    families = sorted(FAMILIES)
    seen = set()
    for _ in range(30):
        trial = study.ask()
        family, params = suggest(trial, families)
        seen.add(family)
        assert params_from_optuna(family, trial.params) == {**FAMILIES[family].defaults, **params}
        build_pipeline(get_settings().contract, family, params)  # every sampled combination is buildable
        study.tell(trial, 0.0)
    assert seen == set(families)
