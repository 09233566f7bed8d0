"""What every training run records beside its metrics: code, config, environment and data provenance.

Tags: git commit (and whether the tree was dirty), a hash of uv.lock, a hash of the settings
snapshot (the snapshot itself is an artifact), the data version and its time window. Inputs: one
``mlflow.log_input`` per split, with the split's fingerprint as its digest. Kept cheap on purpose:
tags go in one ``log_batch``, nothing here reads the data again.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
import warnings
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

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
) -> None:
    """Params, metrics (NaN left out) and tags in one request; `step_metrics` become metric histories."""
    client = client or MlflowClient()
    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None and math.isfinite(v)]
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
