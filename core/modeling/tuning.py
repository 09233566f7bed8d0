"""The Optuna side of tuning, free of Prefect: study storage, sampler, pruner, the objective, workers.

Parallel trials run as independent workers that share one study through its storage (a journal
file on one machine, PostgreSQL across machines): each worker is a process (local) or a task on a
Dask worker, and pulls trials until the study's budget is spent. Optuna's MLflowCallback would
serialise trials behind a lock, so each trial logs its own nested MLflow run instead.

Pruning is per CV fold: after fold k the trial reports the running mean of its fold scores and
stops when the pruner judges it worse than the median of earlier trials at the same fold. Later
folds of a time-series split train on more rows, so pruning early saves the most expensive fits.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient
from threadpoolctl import threadpool_limits

from core.contract import DatasetContract
from core.databases import normalise_url
from core.modeling.catalogue import higher_is_better
from core.modeling.families import build_pipeline, suggest
from core.modeling.training import cross_validate, xy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudySpec:
    """Everything a worker needs to join a study; picklable so it can cross process/Dask boundaries."""

    study_name: str
    storage: str  # "memory", "journal:<path>", or a database URL
    contract: DatasetContract
    families: tuple[str, ...]
    primary_metric: str
    n_trials: int | None
    timeout_seconds: float | None
    n_folds: int
    time_aware: bool
    seed: int
    pruning: bool
    pruner: str
    sampler: str
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    threads_per_worker: int = 1

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if higher_is_better(self.primary_metric) else "minimize"


_MEMORY: dict[str, optuna.storages.BaseStorage] = {}


def make_storage(url: str) -> optuna.storages.BaseStorage:
    if url == "memory":
        # One in-memory storage per process, reused so the worker and the flow see the same study.
        return _MEMORY.setdefault(url, optuna.storages.InMemoryStorage())
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    # PostgreSQL (or any SQLAlchemy URL); heartbeats let a crashed worker's trial be marked failed.
    return optuna.storages.RDBStorage(normalise_url(url), heartbeat_interval=60, grace_period=180)


def make_sampler(spec: StudySpec, worker: int) -> optuna.samplers.BaseSampler:
    # Each worker draws from its own seeded stream: identical seeds would make parallel workers
    # propose the very same parameters.
    seed = spec.seed + worker
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, constant_liar=True)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if not spec.pruning:
        return optuna.pruners.NopPruner()
    if spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)


def create_study(spec: StudySpec) -> optuna.Study:
    return optuna.create_study(
        study_name=spec.study_name,
        storage=make_storage(spec.storage),
        sampler=make_sampler(spec, 0),
        pruner=make_pruner(spec),
        direction=spec.direction,
        load_if_exists=True,
    )


class _TrialRun:
    """One nested MLflow child run per trial, written with a handful of requests."""

    def __init__(self, spec: StudySpec, trial: optuna.Trial, family: str, params: dict[str, Any]) -> None:
        self.client = MlflowClient(spec.tracking_uri) if spec.experiment_id else None
        self.run_id = ""
        if self.client is None:
            return
        tags = {
            "mlflow.parentRunId": spec.parent_run_id or "",
            "optuna.study": spec.study_name,
            "optuna.trial": str(trial.number),
            "family": family,
        }
        run = _retry(
            lambda: self.client.create_run(
                str(spec.experiment_id), run_name=f"trial-{trial.number:03d}-{family}", tags=tags
            )
        )
        self.run_id = run.info.run_id
        trial.set_user_attr("mlflow_run_id", self.run_id)
        from core.registry.tracking import log_run_batch

        _retry(lambda: log_run_batch(self.run_id, params={"family": family, **params}, client=self.client))

    def finish(self, state: str, folds: dict[str, list[float]], value: float | None, seconds: float) -> None:
        if self.client is None:
            return
        from core.registry.tracking import log_run_batch

        metrics = {f"cv_{k}": float(np.nanmean(v)) for k, v in folds.items() if np.isfinite(v).any()}
        metrics["trial_seconds"] = seconds
        metrics["folds_completed"] = float(len(next(iter(folds.values()), [])))
        if value is not None:
            metrics["objective"] = value
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")
        _retry(
            lambda: log_run_batch(
                self.run_id,
                metrics=metrics,
                step_metrics={f"fold_{k}": v for k, v in folds.items()},
                tags={"optuna.state": state},
                client=self.client,
            )
        )
        _retry(lambda: self.client.set_terminated(self.run_id, status))


def _retry(fn: Any, attempts: int = 4) -> Any:
    """Retry an MLflow call: two workers writing one SQLite tracking store can meet a lock."""
    for i in range(attempts):
        try:
            return fn()
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(0.5 * 2**i)
    return None


def make_objective(spec: StudySpec, frame: pd.DataFrame) -> Any:
    X, y = xy(frame, spec.contract)
    metric = spec.primary_metric

    def objective(trial: optuna.Trial) -> float:
        family, params = suggest(trial, list(spec.families))
        started = time.perf_counter()
        tracked = _TrialRun(spec, trial, family, params)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        folds: dict[str, list[float]] = {}

        def on_fold(i: int, fold: dict[str, float]) -> None:
            for k, v in fold.items():
                folds.setdefault(k, []).append(v)
            trial.report(float(np.nanmean(folds[metric])), step=i)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {i}")

        pipeline = build_pipeline(spec.contract, family, params, spec.seed)
        try:
            cross_validate(
                pipeline, X, y, spec.contract, n_folds=spec.n_folds, time_aware=spec.time_aware, seed=spec.seed,
                on_fold=on_fold,
            )  # fmt: skip
        except optuna.TrialPruned:
            tracked.finish("PRUNED", folds, None, time.perf_counter() - started)
            raise
        except Exception:
            tracked.finish("FAIL", folds, None, time.perf_counter() - started)
            raise
        value = float(np.nanmean(folds[metric]))
        tracked.finish("COMPLETE", folds, value, time.perf_counter() - started)
        return value

    return objective


def run_worker(spec: StudySpec, frame: pd.DataFrame, worker: int = 0) -> int:
    """Join the study and run trials until its budget is spent; return how many trials this worker ran."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=spec.study_name,
        storage=make_storage(spec.storage),
        sampler=make_sampler(spec, worker),
        pruner=make_pruner(spec),
    )
    if spec.n_trials is not None and len(study.trials) >= spec.n_trials:
        return 0  # joined after the budget was spent: optimize() would still run one more trial
    callbacks: list[Any] = []
    if spec.n_trials is not None:
        # Counts running trials too, so that parallel workers together stop at the budget.
        callbacks.append(optuna.study.MaxTrialsCallback(spec.n_trials, states=None))
    ran = 0

    def count(_study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        nonlocal ran  # trials this worker finished: the study's own count includes the other workers'
        ran += 1

    callbacks.append(count)
    # One thread per worker: parallelism comes from workers, and OpenMP/BLAS threads competing for
    # the same cores made HistGradientBoosting several times slower on a busy machine.
    with threadpool_limits(limits=spec.threads_per_worker):
        study.optimize(
            make_objective(spec, frame),
            n_trials=None if spec.n_trials is None else spec.n_trials,
            timeout=spec.timeout_seconds,
            callbacks=callbacks,
            catch=(ValueError, ArithmeticError),
            gc_after_trial=False,
        )
    return ran


@dataclass(frozen=True)
class StudySummary:
    n_trials: int
    n_complete: int
    n_pruned: int
    n_failed: int
    best_value: float
    best_params: dict[str, Any]
    best_family: str
    best_trial_number: int
    best_trial_run_id: str
    span_seconds: float  # first trial start to last trial end

    @property
    def trials_per_min(self) -> float:
        return 60.0 * self.n_trials / self.span_seconds if self.span_seconds > 0 else float("nan")


def summarize(study: optuna.Study) -> StudySummary:
    trials = [t for t in study.trials if t.state.is_finished()]
    states = [t.state for t in trials]
    best = study.best_trial
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    return StudySummary(
        n_trials=len(trials),
        n_complete=states.count(optuna.trial.TrialState.COMPLETE),
        n_pruned=states.count(optuna.trial.TrialState.PRUNED),
        n_failed=states.count(optuna.trial.TrialState.FAIL),
        best_value=float(best.value) if best.value is not None else float("nan"),
        best_params=dict(best.params),
        best_family=str(best.params["family"]),
        best_trial_number=best.number,
        best_trial_run_id=str(best.user_attrs.get("mlflow_run_id", "")),
        span_seconds=span,
    )
