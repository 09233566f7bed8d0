"""Flow `tune`: one Optuna study across the model families under one budget, then gate the best.

One MLflow parent run per study; each trial logs a nested child run (params, per-fold metrics,
state: COMPLETE, PRUNED or FAIL). The parent records the budget, the outcome and links the best
trial (tag ``best_trial_run_id``). Trials run in parallel local processes (``tuning.n_workers``) or
on a Dask cluster when ``dask.address`` is set; workers share the study through its storage
(a journal file by default, PostgreSQL when ``tuning.storage_url`` is a postgresql URL).

Run: ``python -m pipelines.tune --n-trials 30 --workers 2``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import mlflow
import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from core.modeling.metrics import check_primary_metric
from core.modeling.training import TrainingData, fit_configured, load_training_data
from core.modeling.tuning import StudySpec, StudySummary, create_study, run_worker, summarize
from core.registry.tracking import log_run_batch, provenance_tags
from core.settings import Settings, get_settings
from pipelines import events
from pipelines.entry import run_main


def storage_url(settings: Settings, study_name: str, n_workers: int, distributed: bool) -> str:
    url = settings.tuning.storage_url
    if url == "memory":
        if n_workers > 1 or distributed:
            raise ValueError("tuning.storage_url 'memory' cannot be shared by several workers: use journal or a DB")
        return url
    if url == "journal":
        path = settings.state / "optuna" / f"{study_name}.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"journal:{path}"
    return url


def tuning_frame(data: TrainingData, settings: Settings) -> pd.DataFrame:
    """The newest `tuning.max_rows` training rows (a seeded sample of them when rows have no time order):
    the search ranks configurations, it need not see all."""
    frame = data["train"]
    limit = settings.tuning.max_rows
    if limit is None or len(frame) <= limit:
        return frame
    ts = settings.contract.timestamp_column
    if ts is None:
        return frame.sample(limit, random_state=settings.seed).sort_index()
    return frame.sort_values(ts, kind="stable").tail(limit)


def worker_context() -> multiprocessing.context.BaseContext:
    """How local study workers start: never plain fork, since the flow process runs Prefect's and MLflow's
    threads, which fork would copy mid-state.

    forkserver where the platform has it: one clean server process imports the study code once, and each
    worker is a fork of it, so a worker starts without importing scikit-learn, Optuna and MLflow again
    (spawn paid ~5 CPU-seconds of imports per worker). spawn elsewhere (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([run_worker.__module__])
    return ctx


def run_workers(spec: StudySpec, frame: pd.DataFrame, n_workers: int, dask_address: str | None) -> list[int]:
    """Run `n_workers` study workers: in this process, in local processes, or on a Dask cluster."""
    if dask_address:
        from core.cluster import connect

        with connect(dask_address) as client:
            workers = list(client.scheduler_info(n_workers=-1)["workers"])
            shared = client.scatter(frame, broadcast=True)
            # One study worker pinned to each Dask worker, so trials really spread over the cluster.
            futures = [
                client.submit(run_worker, spec, shared, i, workers=[w], allow_other_workers=False, pure=False)
                for i, w in enumerate(workers)
            ]
            return [int(n) for n in client.gather(futures)]
    if n_workers == 1:
        return [run_worker(spec, frame, 0)]
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=worker_context()) as pool:
        futures = [pool.submit(run_worker, spec, frame, i) for i in range(n_workers)]
        return [f.result() for f in futures]


@task(name="run-study", cache_policy=NO_CACHE)
def run_study(spec: StudySpec, frame: pd.DataFrame, n_workers: int, dask_address: str | None) -> StudySummary:
    study = create_study(spec)
    run_workers(spec, frame, n_workers, dask_address)
    return summarize(study)


@task(name="fit-and-gate-best", cache_policy=NO_CACHE)
def fit_and_gate_best(
    summary: StudySummary, data: TrainingData, settings: Settings, experiment_id: str, parent_run_id: str
) -> dict[str, Any]:
    from core.modeling.families import params_from_optuna
    from core.registry.promotion import gate_candidate
    from core.registry.tracking import log_candidate

    params = params_from_optuna(summary.best_family, summary.best_params)
    candidate = fit_configured(settings, data, summary.best_family, params)
    logged = log_candidate(
        candidate, data, settings, experiment_id=experiment_id, parent_run_id=parent_run_id,
        run_name=f"best-{summary.best_family}",
        extra_tags={"optuna.best_trial_run_id": summary.best_trial_run_id},
    )  # fmt: skip
    return gate_candidate(logged, data, settings)


@flow(name="tune", log_prints=True)
def tune(  # noqa: PLR0917 (a flow: typed keyword parameters, as deployments pass them)
    n_trials: int | None = None,
    timeout_seconds: float | None = None,
    n_workers: int | None = None,
    pruning: bool | None = None,
    families: list[str] | None = None,
    register_best: bool | None = None,
    study_name: str | None = None,
) -> dict[str, Any]:
    """Search the families' params under one budget; optionally fit, register and gate the best."""
    from core.registry.tracking import use_experiment

    settings = get_settings()
    check_primary_metric(settings.contract.task, settings.training.primary_metric)
    cfg = settings.tuning
    experiment_id = use_experiment(settings)
    workers = n_workers or cfg.n_workers
    name = study_name or f"{settings.model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    data = load_training_data(settings)
    frame = tuning_frame(data, settings)
    spec_kwargs: dict[str, Any] = {
        "study_name": name,
        "storage": storage_url(settings, name, workers, bool(settings.dask.address)),
        "contract": settings.contract,
        "families": tuple(families or cfg.families),
        "primary_metric": settings.training.primary_metric,
        "n_trials": n_trials if n_trials is not None else cfg.n_trials,
        "timeout_seconds": timeout_seconds if timeout_seconds is not None else cfg.timeout_seconds,
        "n_folds": settings.training.cv_folds,
        "time_aware": settings.training.time_aware_cv,
        "seed": settings.seed,
        "pruning": cfg.pruning if pruning is None else pruning,
        "pruner": cfg.pruner,
        "sampler": cfg.sampler,
        "tracking_uri": settings.mlflow_tracking_uri,
        "experiment_id": experiment_id,
    }
    if spec_kwargs["n_trials"] is None and spec_kwargs["timeout_seconds"] is None:
        raise ValueError("tuning needs a budget: tuning.n_trials and/or tuning.timeout_seconds")
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"study-{name}") as parent:
        spec = StudySpec(**spec_kwargs, parent_run_id=parent.info.run_id)
        log_run_batch(
            parent.info.run_id,
            params={
                "study_name": name,
                "families": ",".join(spec.families),
                "n_trials_budget": spec.n_trials,
                "timeout_seconds": spec.timeout_seconds,
                "n_workers": workers,
                "dask_address": settings.dask.address or "",
                "pruning": spec.pruning,
                "pruner": spec.pruner,
                "sampler": spec.sampler,
                "storage": spec.storage.split("@")[-1],  # no credentials from a database URL
                "tuning_rows": len(frame),
                "cv_folds": spec.n_folds,
            },
            tags={**provenance_tags(settings, data.version, data.window), "optuna.study": name},
        )
        summary = run_study(spec, frame, workers, settings.dask.address)
        log_run_batch(
            parent.info.run_id,
            metrics={
                f"best_cv_{spec.primary_metric}": summary.best_value,
                "n_trials": summary.n_trials,
                "n_complete": summary.n_complete,
                "n_pruned": summary.n_pruned,
                "n_failed": summary.n_failed,
                "trials_per_min": summary.trials_per_min,
                "study_seconds": summary.span_seconds,
            },
            params={f"best.{k}": v for k, v in summary.best_params.items()},
            tags={
                "best_trial_run_id": summary.best_trial_run_id,
                "best_trial_number": summary.best_trial_number,
                "best_family": summary.best_family,
                "best_params": json.dumps(summary.best_params, default=str),
            },
        )
        print(
            f"study {name}: {summary.n_trials} trials ({summary.n_pruned} pruned) in {summary.span_seconds:.0f}s; "
            f"best {spec.primary_metric} {summary.best_value:.4f} "
            f"({summary.best_family}, trial {summary.best_trial_number})"
        )
        result: dict[str, Any] = {"study_name": name, "parent_run_id": parent.info.run_id, "summary": summary}
        if cfg.register_best if register_best is None else register_best:
            result["gate"] = fit_and_gate_best(summary, data, settings, experiment_id, parent.info.run_id)
            gate = result["gate"]
            # Same keys as the train flow's result, for callers that run either (retrain).
            result["version"], result["decision"] = gate["version"], gate["decision"]
            print(f"best configuration registered as v{gate['version']}: {gate['decision']['decision']}")
            events.gate_decided(settings.model_name, gate["version"], gate["decision"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Tune the model families with Optuna and gate the best.")
    parser.add_argument("--n-trials", type=int)
    parser.add_argument("--timeout", type=float, help="wall-time budget in seconds")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--no-pruning", action="store_true")
    parser.add_argument("--families", help="comma-separated")
    parser.add_argument("--no-register", action="store_true")
    args = parser.parse_args()
    tune(
        n_trials=args.n_trials,
        timeout_seconds=args.timeout,
        n_workers=args.workers,
        pruning=False if args.no_pruning else None,
        families=args.families.split(",") if args.families else None,
        register_best=False if args.no_register else None,
    )


if __name__ == "__main__":
    run_main(main)
