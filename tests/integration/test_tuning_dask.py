"""Tuning on a real Dask cluster (distributed.LocalCluster, 2 worker processes) with MLflow tracking.

A small bounded study: the point is that trials run on both Dask workers against one shared study,
that each trial is a nested MLflow run under the study's parent run, and that the best trial is linked.
"""

from __future__ import annotations

import uuid

import pytest
from mlflow.tracking import MlflowClient

from tests.training_support import SMALL_DATA_ENV, build_processed_data

N_TRIALS = 6


def test_study_runs_on_two_dask_workers_with_nested_runs(
    mlflow_env: str, dask_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from core.settings import get_settings
    from pipelines.tune import tune

    for key, value in SMALL_DATA_ENV.items():
        monkeypatch.setenv(key, value)
    name = f"tune-it-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLOPS_MODEL_NAME", name)
    monkeypatch.setenv("MLOPS_EXPERIMENT_NAME", name)
    monkeypatch.setenv("MLOPS_DASK__ADDRESS", dask_cluster)
    build_processed_data()

    result = tune(n_trials=N_TRIALS, families=["logistic", "hist_gradient_boosting"], study_name=name)
    summary = result["summary"]
    assert N_TRIALS <= summary.n_trials <= N_TRIALS + 1  # workers stop at the budget (+1 if both finish at once)

    settings = get_settings()
    study = optuna.load_study(
        study_name=name, storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(settings.state / "optuna" / f"{name}.journal"))
        ),
    )  # fmt: skip
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2, f"trials ran on {workers}"

    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(name).experiment_id
    parent = client.get_run(result["parent_run_id"])
    trials = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`optuna.trial` != ''"
    )
    assert len(trials) == summary.n_trials
    for run in trials:
        assert run.data.params["family"] in {"logistic", "hist_gradient_boosting"}
        assert run.data.tags["optuna.state"] in {"COMPLETE", "PRUNED"}
        assert client.get_metric_history(run.info.run_id, "fold_pr_auc")  # per-fold metrics
    best = client.get_run(parent.data.tags["best_trial_run_id"])
    assert best.data.tags["optuna.trial"] == str(summary.best_trial_number)
    assert best.data.metrics["objective"] == pytest.approx(summary.best_value)
    assert parent.data.metrics["best_cv_pr_auc"] == pytest.approx(summary.best_value)
    assert parent.data.params["n_trials_budget"] == str(N_TRIALS)

    # The best configuration was fitted like the training flow does, registered and gated.
    gate = result["gate"]
    mv = client.get_model_version(name, gate["version"])
    assert mv.tags["family"] == summary.best_family
    assert mv.tags["decision"] == gate["decision"]["decision"]
