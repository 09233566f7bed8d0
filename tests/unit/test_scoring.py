"""Batch scoring's accounting and idempotency (core/inference/scoring.py), on datasets that are not the
fraud one: real collection into raw partitions, a real fitted Pipeline, the API's predictor. The model
is handed in directly here; tests/integration/test_scoring.py loads it from a real MLflow server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from core.inference import scoring
from core.inference.predictor import predictor_for
from core.predictions import PREDICTIONS, read_predictions, tables
from core.settings import Settings, load_settings
from tests.scoring_support import add_bad_partition, collect, fit, write_dataset


def _settings(task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[Settings, object]:
    data = write_dataset(task, tmp_path / task)
    for key, value in {**data.env, **env}.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    collect(settings)
    pipeline, _ = fit(settings, data.frame)
    predictor = predictor_for(pipeline, {}, settings.contract, use_onnx=False)
    return settings, scoring.ScoringModel("m", "1", "run-1", predictor)


def _outputs(settings: Settings, kind: str = "predictions") -> pd.DataFrame:
    files = sorted((scoring.output_dir(settings) / kind).rglob("*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files]) if files else pd.DataFrame()


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_every_row_is_scored_or_refused_with_a_reason_and_a_rerun_adds_nothing(
    task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, model = _settings(
        task, tmp_path, monkeypatch, MLOPS_SCORING__BATCH_ROWS="100", MLOPS_SCORING__WAREHOUSE_TABLE="scores"
    )
    add_bad_partition(settings)
    first = scoring.score(settings, model=model)

    assert first["read"] == first["scored"] + first["refused"]
    assert first["refused"] == 2  # the two out-of-range values of the older partition
    assert first["read"] == 1_200 + 20
    assert first["partitions_scored"] == len(scoring.partitions(settings.data_dir / "raw"))
    refused = _outputs(settings, "refused")
    assert len(refused) == 2 and refused["_reason"].str.contains(r"below min|above max").all()
    assert set(first["partitions"][0]["reasons"]) | {p for r in first["partitions"] for p in r["reasons"]} == {
        next(c.name for c in settings.contract.features if c.type == "float" and c.max is not None)
    }
    out = _outputs(settings)
    key = settings.contract.key_column
    assert len(out) == first["scored"] and out[key].is_unique
    assert {"prediction", "model_name", "model_version", "run_id", "scored_at"} <= set(out.columns)
    if task == "multiclass":
        assert {"p_a", "p_b", "p_c"} <= set(out.columns)
        assert np.allclose(out[["p_a", "p_b", "p_c"]].sum(axis=1), 1.0)
    if task == "binary":
        assert {"p_no", "p_yes", "Placed at"} <= set(out.columns) and set(out["prediction"]) <= {"no", "yes"}
    # Accounting per partition, and in each done marker.
    for part in first["partitions"]:
        assert part["read"] == part["scored"] + part["refused"]

    # Re-run: nothing new, nothing written twice.
    second = scoring.score(settings, model=model)
    assert second["read"] == 0 and second["partitions_skipped"] == first["partitions_scored"]
    # Re-score everything: the same files replaced, the log and the warehouse unchanged in size.
    third = scoring.score(settings, model=model, rescore=True)
    assert third["scored"] == first["scored"]
    assert len(_outputs(settings)) == first["scored"]
    logged = read_predictions(settings.prediction_log_url)
    assert len(logged) == first["scored"] and logged["request_id"].is_unique
    assert set(logged["source"]) == {"batch"}
    engine = sa.create_engine(settings.warehouse_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM scores")).scalar() == first["scored"]
    engine.dispose()


def test_a_run_killed_mid_partition_resumes_without_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, model = _settings("binary", tmp_path, monkeypatch, MLOPS_SCORING__BATCH_ROWS="50")
    parts = scoring.partitions(settings.data_dir / "raw")
    assert len(parts) >= 3
    calls = {"n": 0}

    def crash(partition: scoring.Partition, table: object, rows: object) -> None:
        calls["n"] += 1
        if partition == parts[1] and calls["n"] > 8:  # half-way through the second partition
            raise KeyboardInterrupt  # stands in for a kill: nothing after it runs

    original = scoring.score_partition

    def with_crash(*args: object, **kwargs: object) -> scoring.PartitionResult:
        kwargs["sinks"] = [*(kwargs.get("sinks") or []), crash]  # type: ignore[misc]
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scoring, "score_partition", with_crash)
    with pytest.raises(KeyboardInterrupt):
        scoring.score(settings, model=model)
    monkeypatch.setattr(scoring, "score_partition", original)
    out = scoring.output_dir(settings)
    assert scoring.done_marker(out, parts[0]).exists() and not scoring.done_marker(out, parts[1]).exists()
    assert not list((out / "predictions").rglob(".*.tmp"))  # the half-written file was discarded

    resumed = scoring.score(settings, model=model)
    assert resumed["partitions_skipped"] == 1
    assert resumed["read"] == resumed["scored"] + resumed["refused"]
    scored = _outputs(settings)
    assert len(scored) == 1_200 and scored["Order #"].is_unique
    logged = read_predictions(settings.prediction_log_url)
    assert len(logged) == 1_200 and logged["request_id"].is_unique  # rows logged before the crash not doubled


def test_partitions_by_date_and_range_and_a_wrong_window_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, model = _settings("regression", tmp_path, monkeypatch, MLOPS_SCORING__LOG_PREDICTIONS="false")
    dates = [p.date for p in scoring.partitions(settings.data_dir / "raw")]
    one = scoring.score(settings, model=model, dates=[dates[1]])
    assert [p["date"] for p in one["partitions"]] == [dates[1]] and one["window"] == "dates"
    ranged = scoring.score(settings, model=model, start=dates[0], end=dates[1])
    assert [p["date"] for p in ranged["partitions"] if not p["skipped"]] == [dates[0]]
    new = scoring.score(settings, model=model)  # what is left
    assert [p["date"] for p in new["partitions"] if not p["skipped"]] == dates[2:]
    with pytest.raises(scoring.ScoringError, match="no raw partition for"):
        scoring.score(settings, model=model, dates=["1999-01-01"])
    with pytest.raises(scoring.ScoringError, match="not an ISO date"):
        scoring.score(settings, model=model, start="yesterday")


def test_an_older_prediction_log_gains_the_source_column_and_reads_as_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, model = _settings("multiclass", tmp_path, monkeypatch)
    url = settings.prediction_log_url
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    tables(settings.contract, metadata)
    with engine.begin() as conn:  # a log written before the column existed, with one online row
        metadata.create_all(conn)
        conn.exec_driver_sql(f"ALTER TABLE {PREDICTIONS} DROP COLUMN source")
        conn.exec_driver_sql(
            f"INSERT INTO {PREDICTIONS} (request_id, model_name, model_version, timestamp, latency_ms, prediction) "
            "VALUES ('r1', 'm', '1', '2025-01-01 00:00:00.000000', 1.0, 'a')"
        )
    engine.dispose()
    assert read_predictions(url)["source"].tolist() == ["online"]
    manifest = scoring.score(settings, model=model)
    logged = read_predictions(url)
    assert len(logged) == manifest["scored"] + 1
    assert logged["source"].value_counts().to_dict() == {"batch": manifest["scored"], "online": 1}
