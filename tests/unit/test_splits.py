"""Time-ordered splits: ordered, disjoint, complete; a frozen, idempotent version; readable by name."""

from __future__ import annotations

import os
from itertools import pairwise
from pathlib import Path

import pandas as pd
import pytest

from core.data.datasets import DatasetsNotFoundError, latest_processed
from core.data.snapshots import write_partitions
from core.data.splits import SPLITS, PreprocessError, build_splits, split_bounds
from core.settings import Settings, get_settings
from demo.simulator import simulate


@pytest.fixture
def settings(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MLOPS_SPLITS__REFERENCE_ROWS", "500")
    return get_settings()


def collect_days(settings: Settings, start: str, days: int, rows_per_day: int = 400) -> pd.DataFrame:
    """Rows as collection would leave them: validated and partitioned under data_dir/raw."""
    frame = simulate(start=start, days=days, rows_per_day=rows_per_day, true_labels=True, contract=settings.contract)
    frame["is_fraud"] = frame["is_fraud"].astype("int64")
    write_partitions(frame, settings.data_dir / "raw", settings.contract)
    return frame


def test_split_bounds_cover_every_row_once_in_order() -> None:
    shares = {"train": 0.6, "validation": 0.15, "test": 0.1, "holdout": 0.15}
    bounds = split_bounds(1_001, shares)
    assert list(bounds) == list(SPLITS)
    assert bounds["train"][0] == 0 and bounds["holdout"][1] == 1_001
    ends = [bounds[s][1] for s in SPLITS]
    starts = [bounds[s][0] for s in SPLITS]
    assert starts[1:] == ends[:-1]
    assert bounds["train"] == (0, 601)


def test_splits_are_time_ordered_disjoint_and_complete(settings: Settings) -> None:
    frame = collect_days(settings, "2026-01-01", 10)
    manifest = build_splits(settings)
    ds = latest_processed(settings)
    assert ds.version == manifest["version"] and ds.dir.name == ds.version
    parts = {name: ds.load(name) for name in (*SPLITS, "reference")}
    assert sum(len(parts[s]) for s in SPLITS) == len(frame) == manifest["rows"]
    assert [len(parts[s]) for s in SPLITS] == [2_400, 600, 400, 600]
    ids = pd.concat([parts[s]["transaction_id"] for s in SPLITS])
    assert ids.is_unique and set(ids) == set(frame["transaction_id"])
    for older, newer in pairwise(SPLITS):
        assert parts[older]["event_time"].max() <= parts[newer]["event_time"].min()
    assert parts["holdout"]["event_time"].max() == frame["event_time"].max()  # the newest rows are held out
    ref = parts["reference"]
    assert len(ref) == 500 and set(ref["transaction_id"]) <= set(parts["train"]["transaction_id"])
    for name in (*SPLITS, "reference"):
        entry = manifest["splits"][name]
        assert entry["rows"] == len(parts[name])
        assert entry["positive_rate"] == pytest.approx(parts[name]["is_fraud"].mean())
        assert entry["time_min"] == parts[name]["event_time"].min().isoformat()
        assert len(entry["fingerprint"]) == 64
    assert manifest["holdout"]["frozen"] is True
    assert list(parts["train"].columns) == settings.contract.column_names
    assert parts["train"]["customer_tenure_days"].dtype == "Int64"


def test_same_inputs_same_version_nothing_rewritten(settings: Settings) -> None:
    collect_days(settings, "2026-01-01", 5)
    first = build_splits(settings)
    holdout = latest_processed(settings).path("holdout")
    stamp = holdout.stat().st_mtime_ns
    again = build_splits(settings)
    assert again["version"] == first["version"] and again["reused"] is True
    assert holdout.stat().st_mtime_ns == stamp


def test_new_data_gives_a_new_version_and_the_old_holdout_stays_frozen(settings: Settings) -> None:
    collect_days(settings, "2026-01-01", 5)
    old = build_splits(settings)
    old_ds = latest_processed(settings)
    old_holdout, stamp = old_ds.load("holdout"), old_ds.path("holdout").stat().st_mtime_ns
    collect_days(settings, "2026-01-06", 2)
    new = build_splits(settings)
    assert new["version"] != old["version"]
    assert latest_processed(settings).version == new["version"]
    assert old_ds.path("holdout").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(old_ds.load("holdout"), old_holdout)
    assert new["splits"]["holdout"]["time_max"] > old["splits"]["holdout"]["time_max"]


def test_a_row_collected_twice_is_kept_once_with_its_latest_values(settings: Settings) -> None:
    frame = collect_days(settings, "2026-01-01", 5)
    corrected = frame.iloc[[100]].copy()
    corrected["is_fraud"] = 1 - corrected["is_fraud"]
    raw = settings.data_dir / "raw"
    for old in (raw / "date=2026-01-01").glob("*.parquet"):
        os.utime(old, ns=(1, 1))  # the first copy is clearly the older one
    write_partitions(corrected, raw, settings.contract)
    manifest = build_splits(settings)
    assert manifest["rows"] == len(frame)
    rows = pd.concat([latest_processed(settings).load(s) for s in SPLITS])
    kept = rows.loc[rows["transaction_id"] == corrected["transaction_id"].iloc[0], "is_fraud"]
    assert kept.tolist() == corrected["is_fraud"].tolist()


def test_too_little_data_or_none_is_refused(settings: Settings) -> None:
    with pytest.raises(PreprocessError, match="run collection first"):
        build_splits(settings)
    with pytest.raises(DatasetsNotFoundError, match=r"pipelines\.collect"):
        latest_processed(settings)
    collect_days(settings, "2026-01-01", 1, rows_per_day=3)
    with pytest.raises(PreprocessError, match="too few"):
        build_splits(settings)


def test_load_projects_columns_and_refuses_unknown_splits(settings: Settings) -> None:
    collect_days(settings, "2026-01-01", 3)
    build_splits(settings)
    ds = latest_processed(settings)
    assert list(ds.load("test", columns=["amount", "is_fraud"]).columns) == ["amount", "is_fraud"]
    with pytest.raises(KeyError, match="unknown split"):
        ds.path("everything")


def test_window_days_keeps_the_newest_calendar_days(tmp_path: Path) -> None:
    from core.data.splits import newest_days

    files = []
    for day in ("2026-01-01", "2026-01-05", "2026-01-06", "2026-01-09"):
        part = tmp_path / f"date={day}" / "part-x.parquet"
        part.parent.mkdir()
        part.touch()
        files.append(part)
    assert newest_days(files, None) == files
    assert [f.parent.name for f in newest_days(files, 5)] == ["date=2026-01-05", "date=2026-01-06", "date=2026-01-09"]
    assert [f.parent.name for f in newest_days(files, 1)] == ["date=2026-01-09"]
