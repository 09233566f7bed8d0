"""The `score` flow against a real MLflow server and a real Prefect server, on datasets that are not the
fraud one: the champion loaded from the registry, predictions equal to the API's predictor on the same
rows, a re-run that adds nothing, and a scoring process killed half-way (SIGKILL, nothing cleaned up)
that the next run completes without a duplicate."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.contract import label_text
from core.settings import PROJECT_ROOT, Settings, load_settings
from tests.scoring_support import add_bad_partition, collect, fit, raw_frame, write_dataset

# Run in a child process: dies by SIGKILL right after the 7th batch of predictions is written, half-way
# through a partition, so its temporary file, its logged rows and the missing done marker stay behind.
KILLED_RUN = """
import os, signal
from core.inference import scoring
from core.settings import load_settings

original = scoring._PartWriter.write
written = {"n": 0}

def write(self, table):
    original(self, table)
    if "predictions" in self.path.parts:
        written["n"] += 1
        if written["n"] == 7:
            os.kill(os.getpid(), signal.SIGKILL)

scoring._PartWriter.write = write
scoring.score(load_settings())
"""


def _register(settings: Settings, data: pd.DataFrame) -> str:
    import mlflow

    from core.modeling.features import to_model_input
    from core.registry.artefact import log_model, metadata_for

    pipeline, family = fit(settings, data)
    contract = settings.contract
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(settings.experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(settings.experiment_name)
    threshold = 0.5 if contract.task == "binary" else None
    with mlflow.start_run(experiment_id=experiment_id):
        example = to_model_input(data.drop(columns=[contract.target.name]).head(3), contract)
        uri = log_model(
            pipeline, metadata_for(pipeline, contract, family=family, threshold=threshold, primary_metric=None), example
        )
    version = str(mlflow.register_model(uri, settings.model_name).version)
    client.set_registered_model_alias(settings.model_name, "champion", version)
    return version


def _scored(settings: Settings) -> pd.DataFrame:
    files = sorted((settings.data_dir / "scores" / "predictions").rglob("part-*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_score_flow_matches_the_api_reruns_idempotently_and_resumes_after_a_kill(
    task: str, mlflow_env: str, prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.inference.predictor import columns_from_frame
    from core.predictions import read_predictions
    from pipelines.score import score
    from serving.model_store import ModelStore

    data = write_dataset(task, tmp_path / task)
    name = f"score-it-{uuid.uuid4().hex[:8]}"
    env = {
        **data.env,
        "MLOPS_MODEL_NAME": name,
        "MLOPS_EXPERIMENT_NAME": name,
        "MLOPS_MLFLOW_TRACKING_URI": mlflow_env,
        "MLOPS_SCORING__BATCH_ROWS": "100",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    collect(settings)
    add_bad_partition(settings)
    version = _register(settings, data.frame)

    # The flow, as `mlops run score` runs it: the champion from the registry.
    first = score()
    assert first["model_version"] == version and first["model_name"] == name
    assert first["read"] == 1_220 and first["scored"] + first["refused"] == first["read"] and first["refused"] == 2
    scored = _scored(settings)
    key = settings.contract.key_column
    assert len(scored) == first["scored"] and scored[key].is_unique
    assert set(scored["model_version"]) == {version} and scored["run_id"].notna().all()

    # The API's predictor (serving's model store over the registry's REST API) on the same rows.
    store = ModelStore(settings)
    assert store.refresh()
    loaded = store.current
    assert loaded is not None
    if settings.serving.use_onnx:
        store.upgrade(loaded)
    predictor = store.current.predictor  # type: ignore[union-attr]
    raw = raw_frame(settings)
    raw = raw[raw[key].isin(scored[key])].reset_index(drop=True)
    api = predictor.predict(columns_from_frame(raw, settings.contract))
    mine = scored.set_index(key).loc[raw[key]]
    assert [label_text(v) for v in api.labels] == [label_text(v) for v in mine["prediction"]]
    assert api.probabilities is not None
    for i, label in enumerate(api.classes):
        assert np.allclose(mine[f"p_{label_text(label)}"].to_numpy(), api.probabilities[:, i], atol=1e-6)

    # Again: nothing new to score, nothing duplicated.
    second = score()
    assert second["read"] == 0 and second["partitions_skipped"] == first["partitions_scored"]
    assert len(_scored(settings)) == first["scored"]
    logged = read_predictions(settings.prediction_log_url)
    assert len(logged) == first["scored"] and set(logged["source"]) == {"batch"}
    # A given version and one date, re-scored: its files replaced, still nothing duplicated.
    day = first["partitions"][0]["date"]
    third = score(version=int(version), dates=[day], rescore=True)
    assert third["model_version"] == version and third["window"] == "dates"
    assert {p["date"] for p in third["partitions"]} == {day} and third["read"] > 0
    assert len(_scored(settings)) == first["scored"]
    assert len(read_predictions(settings.prediction_log_url)) == first["scored"]

    # Killed half-way: start over from an empty output, kill, resume.
    shutil.rmtree(settings.data_dir / "scores")
    run = subprocess.run(
        [sys.executable, "-c", KILLED_RUN],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    out = settings.data_dir / "scores"
    done_before = sorted((out / "done").glob("*.json"))
    # Binary: the first day (two partitions, one the older writer's) done, killed in the second day;
    # multiclass: the `all` partition's older writer's file done (no collection manifest lists it, so it is the
    # oldest and read first), killed in the collected one.
    assert len(done_before) == (2 if task == "binary" else 1)
    assert list((out / "predictions").rglob(".*.tmp"))  # the partition it died in, half-written
    resumed = score()
    assert resumed["partitions_skipped"] == len(done_before)
    assert resumed["scored"] + resumed["refused"] == resumed["read"]
    assert not list(out.rglob(".*.tmp"))
    after = _scored(settings)
    assert len(after) == first["scored"] and after[key].is_unique
    logged = read_predictions(settings.prediction_log_url)
    assert len(logged) == first["scored"] and logged["request_id"].is_unique
