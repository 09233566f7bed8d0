"""Flow `train`: fit every configured model family with its default params, log each, register the best.

For each family: time-aware CV on the train split, a final fit on all of it, the decision threshold
chosen on validation, metrics on test, then one MLflow run (child of the flow's parent run) with
params, metrics, provenance tags, dataset inputs, plots and the skops-serialised pipeline. The best
by the primary metric on test is registered and sent through the promotion gate on the holdout.

Run: ``python -m pipelines.train [--families logistic,hist_gradient_boosting] [--no-register]``
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

import mlflow
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from core.modeling.families import families_for
from core.modeling.metrics import check_primary_metric
from core.modeling.training import TrainingData, better, fit_configured, load_training_data
from core.registry.promotion import gate_candidate
from core.registry.tracking import LoggedCandidate, log_candidate, log_run_batch, provenance_tags, use_experiment
from core.settings import Settings, get_settings
from pipelines import events
from pipelines.entry import run_main


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
    settings = get_settings()
    check_primary_metric(settings.contract.task, settings.training.primary_metric)
    experiment_id = use_experiment(settings)
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
        events.gate_decided(settings.model_name, result.version, result.decision)
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
    run_main(main)
