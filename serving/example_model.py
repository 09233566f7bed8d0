"""Register a small model in the format the training pipeline produces.

Used by the serving tests, the serving benchmark and a fresh clone that has no trained model yet. The
model is any family of core.modeling.families, built by its `build_pipeline` (the contract's
preprocessor + the family's estimator, with the family's default params unless given) and logged with
skops, a signature, an input example and the metadata the service reads, through
core.registry.artefact as the training flow logs its models.
This module imports mlflow; the service itself never imports it.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from core.contract import DatasetContract
from core.inference.sample import synthetic_frame
from core.modeling.families import FamilyName, Params, build_pipeline
from core.modeling.features import to_model_input
from core.registry.artefact import log_model, metadata_for


def labelled_frame(contract: DatasetContract, n_rows: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """Synthetic inputs and a label that depends on them, so the model has something to learn."""
    X = to_model_input(synthetic_frame(contract, n_rows, seed), contract)
    rng = np.random.default_rng(seed + 1)
    score = rng.normal(0, 0.5, n_rows)
    for name in contract.numeric_features:
        col = X[name].fillna(X[name].median())
        score += ((col - col.mean()) / (col.std() or 1.0)).to_numpy()
    for name in contract.categorical_features:
        codes = pd.factorize(X[name])[0]
        score += 0.3 * (codes % 3 == 0)
    classes = list(contract.target.classes or (0, 1))
    positive = contract.target.positive_class if contract.target.positive_class is not None else classes[-1]
    negative = next(c for c in classes if c != positive)
    y = pd.Series(np.where(score > np.quantile(score, 0.9), positive, negative), name=contract.target.name)
    return X, y


def register_example_model(
    contract: DatasetContract,
    model_name: str,
    *,
    family: FamilyName = "logistic",
    params: Params | None = None,
    alias: str | None = "champion",
    n_rows: int = 2_000,
    seed: int = 0,
    threshold: float = 0.5,
    experiment_name: str = "serving-example",
) -> str:
    """Train, log and register a `family` model (`params` over the family's defaults); point `alias` at
    it. Returns the new version number.

    The MLflow tracking URI comes from the environment (MLFLOW_TRACKING_URI) or mlflow.set_tracking_uri.
    """
    X, y = labelled_frame(contract, n_rows, seed)
    pipeline = build_pipeline(contract, family, params, seed=seed).fit(X, y)
    metadata = metadata_for(pipeline, contract, family=family, threshold=threshold, primary_metric=None)
    # By id: mlflow.set_experiment would change the process's active experiment for later runs.
    found = mlflow.get_experiment_by_name(experiment_name)
    experiment_id = found.experiment_id if found is not None else mlflow.create_experiment(experiment_name)
    start = str(pd.Timestamp("2026-01-01").date())
    end = str(pd.Timestamp("2026-03-01").date())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metrics({"train_accuracy": float(pipeline.score(X, y))})
        model_uri = log_model(pipeline, metadata, X.head(3))
    version = str(mlflow.register_model(model_uri, model_name).version)
    client = mlflow.MlflowClient()
    tags = {
        "threshold": str(threshold),
        "family": family,
        "data_window_start": start,
        "data_window_end": end,
        "decision": "promoted",
    }
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    card = f"# {model_name} v{version}\n\nExample {family} trained on {n_rows} synthetic rows (run {run.info.run_id})."
    client.update_model_version(model_name, version, description=card)
    if alias:
        client.set_registered_model_alias(model_name, alias, version)
    return version
