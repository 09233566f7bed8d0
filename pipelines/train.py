"""Flow `train`: fit every configured model family with its default params, log each, register the best.

For each family: time-aware CV on the train split, a final fit on all of it, the decision threshold
chosen on validation, metrics on test, then one MLflow run (child of the flow's parent run) with
params, metrics, provenance tags, dataset inputs, plots and the skops-serialised pipeline. The best
by the primary metric on test is registered and sent through the promotion gate on the holdout.

Run: ``python -m pipelines.train [--families logistic,hist_gradient_boosting] [--no-register]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from threadpoolctl import threadpool_limits

from core.contract import DatasetContract
from core.modeling.diagnostics import write_plots
from core.modeling.families import TRUSTED_TYPES, families_for
from core.modeling.metrics import check_primary_metric
from core.modeling.training import (
    Candidate,
    TrainingData,
    better,
    fit_configured,
    load_training_data,
    predict_scores,
    xy,
)
from core.registry.tracking import config_snapshot, log_dataset_inputs, log_run_batch, provenance_tags
from core.settings import Settings, get_settings


@dataclass
class LoggedCandidate:
    candidate: Candidate
    run_id: str
    model_uri: str


@dataclass
class TrainResult:
    parent_run_id: str
    candidates: dict[str, dict[str, Any]]
    best_family: str
    best_run_id: str
    best_model_uri: str
    skipped: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    decision: dict[str, Any] | None = None


def ensure_experiment(settings: Settings) -> str:
    """Point mlflow at the configured tracking URI and return the experiment id (created when missing)."""
    uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    experiment = mlflow.get_experiment_by_name(settings.experiment_name)
    if experiment is not None:
        return str(experiment.experiment_id)
    # A local backend would otherwise put artifacts in ./mlruns of whatever directory the flow runs in.
    location = None if uri.startswith("http") else settings.mlflow_artifacts_dir.as_uri()
    return str(mlflow.create_experiment(settings.experiment_name, artifact_location=location))


def pip_requirements() -> list[str]:
    """Explicit, pinned: inferring them costs seconds per model and can guess wrong."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")]


def model_metadata(contract: DatasetContract, family: str, threshold: float, primary_metric: str) -> dict[str, Any]:
    """What serving needs beside the pipeline: read from the MLmodel file's `metadata`."""
    return {
        "threshold": float(threshold),
        "family": family,
        "task": contract.task,
        "positive_class": contract.target.positive_class,
        "primary_metric": primary_metric,
        "contract": contract.name,
        "input_columns": contract.input_columns,
    }


def log_model(candidate: Candidate, contract: DatasetContract, example: Any, primary_metric: str) -> str:
    """Log the fitted pipeline with skops and the family's explicit trusted types; return its model URI."""
    from mlflow.models import infer_signature

    # The pip requirements are explicit; uv auto-detection would add seconds per model exporting the
    # project's lock (its hash is already a run tag).
    os.environ.setdefault("MLFLOW_UV_AUTO_DETECT", "false")
    output = candidate.pipeline.predict_proba(example) if contract.is_classification else None
    if output is None:
        output = candidate.pipeline.predict(example)
    info = mlflow.sklearn.log_model(
        candidate.pipeline,
        name="model",
        serialization_format="skops",
        skops_trusted_types=list(TRUSTED_TYPES[candidate.family]),
        pip_requirements=pip_requirements(),
        signature=infer_signature(example, output),
        input_example=example,
        # Scoring servers built from the pyfunc flavour return probabilities, not hard labels.
        pyfunc_predict_fn="predict_proba" if contract.is_classification else "predict",
        metadata=model_metadata(contract, candidate.family, candidate.threshold, primary_metric),
    )
    return str(info.model_uri)


def log_candidate(
    candidate: Candidate,
    data: TrainingData,
    settings: Settings,
    *,
    experiment_id: str,
    parent_run_id: str | None,
    run_name: str,
    extra_tags: dict[str, Any] | None = None,
) -> LoggedCandidate:
    """One MLflow run for one fitted candidate: params, metrics, tags, inputs, plots, the model."""
    contract = settings.contract
    primary = settings.training.primary_metric
    tags = {
        **provenance_tags(settings, data.version, data.window),
        "family": candidate.family,
        "threshold": f"{candidate.threshold:.6f}",
        "primary_metric": primary,
        "task": contract.task,
        **(extra_tags or {}),
    }
    metrics: dict[str, float] = {f"cv_{k}": v for k, v in candidate.cv_mean().items()}
    metrics |= {f"cv_{k}_std": float(np.nanstd(v)) for k, v in candidate.cv.items()}
    metrics |= {f"validation_{k}": v for k, v in candidate.validation.items()}
    metrics |= {f"test_{k}": v for k, v in candidate.test.items()}
    for slice_name, values in candidate.test_slices.items():
        key = slice_name.replace("=", "_")
        metrics |= {f"test_slice_{key}_{m}": v for m, v in values.items() if m != "rows"}
    metrics["threshold"] = candidate.threshold
    metrics["fit_seconds"] = candidate.fit_seconds
    # The fit's thread limit holds for scoring and plots too: oversubscribed OpenMP threads made
    # permutation importance on a busy 2-core machine ~10x slower.
    with (
        threadpool_limits(limits=settings.training.n_threads),
        mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name,
            parent_run_id=parent_run_id,
            nested=parent_run_id is not None,
        ) as run,
    ):
        run_id = run.info.run_id
        log_run_batch(
            run_id,
            params=candidate.params,
            metrics=metrics,
            tags=tags,
            step_metrics={f"cv_fold_{k}": v for k, v in candidate.cv.items()},
        )
        log_dataset_inputs(data.info, data.location)
        mlflow.log_dict(config_snapshot(settings), "config/settings.json")
        Xt, yt = xy(data["test"], contract)
        score = (
            candidate.test_scores
            if candidate.test_scores is not None
            else predict_scores(candidate.pipeline, Xt, contract)
        )
        with tempfile.TemporaryDirectory() as tmp:
            write_plots(
                candidate.pipeline,
                Xt,
                yt,
                score,
                contract=contract,
                threshold=candidate.threshold,
                out_dir=Path(tmp),
                primary_metric=primary,
                max_rows=settings.training.diagnostics_rows,
                seed=settings.seed,
            )
            mlflow.log_artifacts(tmp, artifact_path="plots")
        model_uri = log_model(candidate, contract, Xt.head(5), primary)
    return LoggedCandidate(candidate, run_id, model_uri)


@task(name="load-splits", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def load_splits(settings: Settings) -> TrainingData:
    return load_training_data(settings)


@task(name="fit-and-log-family", cache_policy=NO_CACHE)
def fit_and_log_family(
    family: str, data: TrainingData, settings: Settings, experiment_id: str, parent_run_id: str
) -> LoggedCandidate:
    candidate = fit_configured(settings, data, family)
    return log_candidate(
        candidate, data, settings, experiment_id=experiment_id, parent_run_id=parent_run_id, run_name=family
    )


@flow(name="train", log_prints=True)
def train(families: list[str] | None = None, register_best: bool | None = None) -> TrainResult:
    """Fit each family with its default params, register the best and run the promotion gate."""
    from pipelines.promote import gate_candidate

    settings = get_settings()
    check_primary_metric(settings.contract.task, settings.training.primary_metric)
    experiment_id = ensure_experiment(settings)
    data = load_splits(settings)
    names, skipped = families_for(
        families or list(settings.training.families), len(data["train"]), settings.training.svm_max_rows
    )
    for name, why in skipped.items():
        print(f"skipping {name}: {why}")
    if not names:
        raise ValueError(f"no model family left to train (skipped: {skipped})")
    primary = settings.training.primary_metric
    started = time.perf_counter()
    with mlflow.start_run(experiment_id=experiment_id, run_name="train") as parent:
        parent_id = parent.info.run_id
        # Families run one after another: each fit already uses every core (OpenMP/BLAS).
        logged = {name: fit_and_log_family(name, data, settings, experiment_id, parent_id) for name in names}
        best = names[0]
        for name in names[1:]:
            if better(primary, logged[name].candidate.test[primary], logged[best].candidate.test[primary]):
                best = name
        log_run_batch(
            parent_id,
            metrics={f"{n}_test_{primary}": lc.candidate.test[primary] for n, lc in logged.items()},
            tags={
                "best_family": best,
                "best_run_id": logged[best].run_id,
                "skipped_families": ",".join(f"{k}: {v}" for k, v in skipped.items()) or "none",
                **provenance_tags(settings, data.version, data.window),
            },
        )
        print(f"best family by test {primary}: {best} ({logged[best].candidate.test[primary]:.4f})")
        result = TrainResult(
            parent_run_id=parent_id,
            candidates={
                n: {"run_id": lc.run_id, "cv": lc.candidate.cv_mean(), "test": lc.candidate.test}
                for n, lc in logged.items()
            },
            best_family=best,
            best_run_id=logged[best].run_id,
            best_model_uri=logged[best].model_uri,
            skipped=skipped,
        )
    if settings.training.auto_register if register_best is None else register_best:
        outcome = gate_candidate(logged[best], data, settings)
        result.version = outcome["version"]
        result.decision = outcome["decision"]
        print(f"registered {settings.model_name} v{result.version}: {outcome['decision']['decision']}")
    print(f"train flow finished in {time.perf_counter() - started:.1f}s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the configured model families and register the best.")
    parser.add_argument("--families", help="comma-separated, default: training.families from settings")
    parser.add_argument("--no-register", action="store_true", help="log runs but do not register or gate")
    args = parser.parse_args()
    families = args.families.split(",") if args.families else None
    result = train(families=families, register_best=False if args.no_register else None)
    print(result)


if __name__ == "__main__":
    main()
