"""Batch scoring on a real Dask cluster (distributed.LocalCluster, 2 worker processes) gives what the
local path gives: the same files with the same predictions and reason codes, the same refused rows, the
same accounting, the same warehouse and prediction-log rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from core.inference import scoring
from core.inference.predictor import predictor_for
from core.predictions import read_predictions
from core.settings import DaskSettings, Settings, load_settings
from tests.scoring_support import add_bad_partition, collect, fit, write_dataset

VOLATILE = {"scored_at", "seconds", "scoring_run"}  # when and how fast, never what


def _variant(settings: Settings, root: Path, address: str | None) -> Settings:
    return settings.model_copy(
        update={
            "dask": DaskSettings(address=address),
            "scoring": settings.scoring.model_copy(update={"output_dir": root / "scores"}),
            "prediction_log_url": f"sqlite:///{root / 'predictions.db'}",
            "warehouse_url": f"sqlite:///{root / 'warehouse.db'}",
        }
    )


def _files(out: Path, kind: str) -> dict[str, pd.DataFrame]:
    return {
        str(f.relative_to(out)): pq.read_table(f).to_pandas().drop(columns=["scored_at"], errors="ignore")
        for f in sorted((out / kind).rglob("*.parquet"))
    }


def _markers(out: Path) -> dict[str, dict[str, Any]]:
    return {
        f.name: {k: v for k, v in json.loads(f.read_text()).items() if k not in VOLATILE}
        for f in sorted((out / "done").glob("*.json"))
    }


def _table(url: str, name: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        frame = pd.read_sql_table(name, engine).drop(columns=["scored_at"])
    finally:
        engine.dispose()
    return frame.sort_values(list(frame.columns[:2])).reset_index(drop=True)


def test_dask_scoring_matches_the_local_path(
    dask_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_dataset("binary", tmp_path / "binary", n=3_000)
    env = {
        **data.env,
        "MLOPS_SCORING__BATCH_ROWS": "400",
        "MLOPS_SCORING__WAREHOUSE_TABLE": "scores",
        "MLOPS_SCORING__EXPLAIN": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    collect(settings)
    add_bad_partition(settings)
    pipeline, _ = fit(settings, data.frame)
    model = scoring.ScoringModel("m", "1", "run-1", predictor_for(pipeline, {}, settings.contract, use_onnx=True))

    local = _variant(settings, tmp_path / "local", None)
    remote = _variant(settings, tmp_path / "dask", dask_cluster)
    a = scoring.score(local, model=model)
    b = scoring.score(remote, model=model)

    assert b["executor"] == f"dask {dask_cluster}" and a["executor"] == "local"
    assert a["partitions_scored"] == b["partitions_scored"] >= 4  # several partitions: several tasks
    for key in ("read", "scored", "refused", "partitions_skipped", "explain", "runtime"):
        assert a[key] == b[key], key
    assert a["refused"] == 2 and a["read"] == 3_000 + 20
    strip = [{k: v for k, v in p.items() if k not in VOLATILE} for p in a["partitions"]]
    assert strip == [{k: v for k, v in p.items() if k not in VOLATILE} for p in b["partitions"]]

    out_a, out_b = scoring.output_dir(local), scoring.output_dir(remote)
    for kind in ("predictions", "refused"):
        fa, fb = _files(out_a, kind), _files(out_b, kind)
        assert fa.keys() == fb.keys() and fa
        for name in fa:
            pd.testing.assert_frame_equal(fa[name], fb[name], check_exact=True)
    assert _markers(out_a) == _markers(out_b)
    pd.testing.assert_frame_equal(
        _table(local.warehouse_url, "scores"), _table(remote.warehouse_url, "scores"), check_exact=True
    )
    log_a = read_predictions(local.prediction_log_url).drop(columns=["id"], errors="ignore")
    log_b = read_predictions(remote.prediction_log_url).drop(columns=["id"], errors="ignore")
    assert len(log_a) == len(log_b) == a["scored"]
    assert sorted(log_a["request_id"]) == sorted(log_b["request_id"])

    # Re-run on the cluster: every partition is done, nothing is sent or written again.
    again = scoring.score(remote, model=model)
    assert again["read"] == 0 and again["partitions_skipped"] == b["partitions_scored"]
    assert len(read_predictions(remote.prediction_log_url)) == a["scored"]


def test_the_old_tuning_key_is_read_with_a_deprecation_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_TUNING__DASK_ADDRESS", "tcp://127.0.0.1:9999")
    with pytest.warns(FutureWarning, match=r"tuning.dask_address .* deprecated: set dask.address"):
        settings = Settings()
    assert settings.dask.address == "tcp://127.0.0.1:9999"
    monkeypatch.setenv("MLOPS_DASK__ADDRESS", "tcp://127.0.0.1:8786")
    with pytest.raises(ValueError, match="disagree"):
        Settings()
