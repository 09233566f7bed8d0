"""MLflow tracking: the experiment, and what every training run records.

:func:`use_experiment` points MLflow at the configured tracking URI once per process and returns the
experiment id. :func:`log_candidate` writes one run per fitted candidate: params, metrics, provenance
tags, dataset inputs, plots and the model artefact (core.registry.artefact).

Provenance tags: git commit (and whether the tree was dirty), a hash of uv.lock, a hash of the settings
snapshot (the snapshot itself is an artifact), the data version and its time window. Inputs: one
``mlflow.log_input`` per split, with the split's fingerprint as its digest. Kept cheap on purpose:
tags go in one ``log_batch``, nothing here reads the data again.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from threadpoolctl import threadpool_limits

from core.modeling.diagnostics import write_plots
from core.modeling.training import Candidate, TrainingData, predict_scores, xy
from core.registry.artefact import log_model, metadata_for
from core.settings import PROJECT_ROOT, Settings

# mlflow rejects a param value longer than this; longer values are cut, never dropped silently.
_MAX_PARAM = 6000


@lru_cache(maxsize=1)
def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the project checkout; ("unknown", False) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit, bool(status.strip())


def lock_hash() -> str:
    lock = PROJECT_ROOT / "uv.lock"
    return hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else "missing"


def config_snapshot(settings: Settings) -> dict[str, Any]:
    """The effective settings, secrets left out."""
    return settings.model_dump(mode="json", exclude={"admin_api_key"})


def config_hash(snapshot: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:16]


def provenance_tags(settings: Settings, data_version: str, window: tuple[str, str]) -> dict[str, str]:
    commit, dirty = git_commit()
    return {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "lock_hash": lock_hash(),
        "config_hash": config_hash(config_snapshot(settings)),
        "data_version": data_version,
        "data_window_start": window[0],
        "data_window_end": window[1],
    }


def log_run_batch(
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, Any] | None = None,
    step_metrics: Mapping[str, list[float]] | None = None,
    client: MlflowClient | None = None,
    model_id: str | None = None,
) -> None:
    """Params, metrics (NaN left out) and tags in one request; `step_metrics` become metric histories.
    With `model_id`, `metrics` are also the metrics of that logged model (what the MLflow UI shows on the
    model's page)."""
    client = client or MlflowClient()
    now = int(time.time() * 1000)
    ms = [
        Metric(k, float(v), now, 0, model_id=model_id)
        for k, v in (metrics or {}).items()
        if v is not None and math.isfinite(v)
    ]
    for key, values in (step_metrics or {}).items():
        ms.extend(Metric(key, float(v), now, i) for i, v in enumerate(values) if math.isfinite(v))
    ps = [Param(k, str(v)[:_MAX_PARAM]) for k, v in (params or {}).items()]
    ts = [RunTag(k, str(v)[:_MAX_PARAM]) for k, v in (tags or {}).items()]
    # The tracking server caps one batch at 1000 metrics / 100 params / 100 tags.
    for i in range(0, len(ps), 100):
        client.log_batch(run_id, params=ps[i : i + 100])
    for i in range(0, len(ms), 1000):
        client.log_batch(run_id, metrics=ms[i : i + 1000])
    for i in range(0, len(ts), 100):
        client.log_batch(run_id, tags=ts[i : i + 100])


def log_dataset_inputs(splits: Mapping[str, Mapping[str, Any]], location: str) -> None:
    """One mlflow.log_input per split, identified by its fingerprint; the data itself is not re-read."""
    for split, info in splits.items():
        fingerprint = str(info.get("fingerprint", ""))
        with warnings.catch_warnings():
            # A local path matches mlflow's local-artifact source twice; it says so on every call.
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(f"{location}/{split}")
        # MetaDataset describes data without holding it; mlflow declares `profile` abstract but does not need it.
        dataset = MetaDataset(  # type: ignore[abstract]
            source=source,
            name=split,
            digest=fingerprint[:32] or None,
        )
        tags = {"fingerprint": fingerprint, "rows": str(info.get("rows", ""))}
        for key in ("start", "end"):
            if key in info:
                tags[f"window_{key}"] = str(info[key])
        mlflow.log_input(dataset, context=split, tags=tags)


def use_experiment(settings: Settings) -> str:
    """Point MLflow at the configured tracking URI and return the experiment id (created when missing)."""
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


@dataclass
class LoggedCandidate:
    """A fitted candidate and where MLflow keeps it."""

    candidate: Candidate
    run_id: str
    model_uri: str


def log_candidate_model(candidate: Candidate, data: TrainingData, settings: Settings) -> str:
    """Log the candidate's Pipeline as the active run's model artefact; returns its model URI."""
    contract = settings.contract
    example = xy(data["test"], contract)[0].head(5)
    metadata = metadata_for(
        candidate.pipeline,
        contract,
        family=candidate.family,
        threshold=candidate.threshold if contract.task == "binary" else None,
        primary_metric=settings.training.primary_metric,
    )
    return log_model(candidate.pipeline, metadata, example)


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
        log_run_batch(run_id, params=candidate.params, tags=tags)
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
        model_uri = log_candidate_model(candidate, data, settings)
        # After the model, linked to it in the same request: logged before it, MLflow's log_model links the
        # run's metrics itself with one request per metric for their histories (~100 requests a candidate).
        logged = mlflow.last_logged_model()
        log_run_batch(
            run_id,
            metrics=metrics,
            step_metrics={f"cv_fold_{k}": v for k, v in candidate.cv.items()},
            model_id=logged.model_id if logged is not None else None,
        )
    return LoggedCandidate(candidate, run_id, model_uri)
