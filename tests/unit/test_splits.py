"""Time-ordered splits: ordered, disjoint, complete; a frozen, idempotent version; readable by name."""

from __future__ import annotations

import os
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.contract import ROW_KEY
from core.data.datasets import DatasetsNotFoundError, latest_processed
from core.data.snapshots import write_partitions
from core.data.splits import SPLITS, PreprocessError, build_splits, split_bounds
from core.settings import Settings, get_settings, load_settings
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


# ---- unordered data: random, stratified and group splits; splits a classifier can be judged on ---------------
def _unordered_settings(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    task: str = "multiclass",
    id_column: str | None = None,
    **splits: Any,
) -> Settings:
    """A toy contract without a timestamp (x, group, label; with ``id_column``, a string id column first)."""
    import yaml

    raw: dict[str, Any] = {
        "name": "toy",
        "task": task,
        "target": {"name": "label", "classes": ["a", "b", "c"]} if task == "multiclass" else {"name": "label"},
        "columns": [
            *([{"name": id_column, "type": "string"}] if id_column else []),
            {"name": "x", "type": "float"},
            {"name": "group", "type": "string"},
            {"name": "label", "type": "string"} if task == "multiclass" else {"name": "label", "type": "float"},
        ],
    }
    if id_column:
        raw["id_column"] = id_column
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLOPS_CONFIG", "configs/settings.yaml")
    monkeypatch.setenv("MLOPS_CONTRACT_PATH", str(path))
    return load_settings(splits={"reference_rows": 50, **splits})


def _collect(settings: Settings, frame: pd.DataFrame) -> None:
    from core.data.rules import row_keys
    from core.data.validation import validate_batch

    checked = validate_batch(frame, settings.contract)
    assert checked.valid_table is not None
    checked.valid[ROW_KEY] = row_keys(checked.valid_table, settings.contract.column_names).to_numpy(
        zero_copy_only=False
    )
    write_partitions(checked.valid, settings.data_dir / "raw", settings.contract)


def _ordered_by_class(n: int = 300) -> pd.DataFrame:
    # Exported "sorted by class", as spreadsheets often are: a time-like cut would miss a class entirely.
    labels = np.repeat(["a", "b", "c"], n // 3)
    return pd.DataFrame({"x": np.arange(n, dtype=float), "group": [f"g{i % 30}" for i in range(n)], "label": labels})


def test_unordered_classification_defaults_to_stratified_splits(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _unordered_settings(tmp_path, monkeypatch)
    _collect(settings, _ordered_by_class())
    manifest = build_splits(settings)
    assert manifest["strategy"] == "stratified"
    ds = latest_processed(settings)
    for name in SPLITS:
        counts = ds.load(name)["label"].value_counts()
        assert set(counts.index) == {"a", "b", "c"} and counts.max() - counts.min() <= 1, (name, counts)
    assert sum(manifest["splits"][s]["rows"] for s in SPLITS) == 300
    assert manifest["splits"]["train"]["classes"] == {"a": 60, "b": 60, "c": 60}
    assert build_splits(settings)["version"] == manifest["version"]  # same inputs, same version


def test_group_splits_keep_a_group_in_one_split(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _unordered_settings(tmp_path, monkeypatch, task="regression", strategy="group", group_column="group")
    frame = _ordered_by_class()
    frame["label"] = frame["x"] * 2.0
    _collect(settings, frame)
    build_splits(settings)
    ds = latest_processed(settings)
    owners = {name: set(ds.load(name)["group"]) for name in SPLITS}
    for a, b in pairwise(SPLITS):
        assert not owners[a] & owners[b]
    assert set().union(*owners.values()) == {f"g{i}" for i in range(30)}


def test_a_split_missing_a_class_is_refused_naming_class_and_split(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _unordered_settings(tmp_path, monkeypatch, strategy="random")
    frame = _ordered_by_class()
    frame.loc[frame.index[:3], "label"] = "rare"  # three rows of a fourth label: quarantined, not a class
    frame = frame[frame["label"] != "rare"]
    rare = pd.DataFrame({"x": [1.0], "group": ["g0"], "label": ["c"]})
    only_a_and_b = frame[frame["label"] != "c"]
    _collect(settings, pd.concat([only_a_and_b, rare], ignore_index=True))
    with pytest.raises(PreprocessError, match=r"class\(es\) \['c'\]") as err:
        build_splits(settings)
    assert "split" in str(err.value)
    assert not list((settings.data_dir / "processed").glob(".tmp-*"))  # nothing half-written is left


def test_a_window_that_drops_most_rows_warns(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    collect_days(settings, "2026-01-01", 10)
    windowed = load_settings(splits={"reference_rows": 500, "window_days": 3})
    manifest = build_splits(windowed)
    assert manifest["rows"] == 1_200
    assert any("keeps 1200 of 4000 collected rows" in w for w in manifest["warnings"])


def test_the_copy_published_last_wins_whatever_the_files_modification_times(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV source read whole each run (a contract with an id and no timestamp) where one row changes between two
    collections: preprocessing keeps the second run's copy by the manifests' order, also after a restore that gave
    the first run's file the newest modification time."""
    from core.data.collection import run_collection
    from core.data.snapshots import raw_part_files

    source = tmp_path / "orders.csv"
    monkeypatch.setenv("MLOPS_SOURCE__KIND", "csv")
    monkeypatch.setenv("MLOPS_SOURCE__PATH", str(source))
    settings = _unordered_settings(tmp_path, monkeypatch, id_column="order")
    frame = _ordered_by_class().assign(order=[f"o-{i:03d}" for i in range(300)])
    frame.to_csv(source, index=False)
    first = run_collection(settings)
    frame.loc[7, "label"] = "b"  # the source corrects a label
    frame.to_csv(source, index=False)
    second = run_collection(settings)
    assert {f["path"] for f in second["files"] if f["new"]}, "the change wrote a new part file"

    raw = settings.data_dir / "raw"
    restored = {f["path"] for f in first["files"]}
    for i, path in enumerate(raw_part_files(raw)):
        stamp = 2_000_000_000_000_000_000 + i if path.relative_to(raw).as_posix() in restored else i
        os.utime(path, ns=(stamp, stamp))  # the first run's files now look the newest
    build_splits(settings)
    rows = pd.concat([latest_processed(settings).load(s) for s in SPLITS])
    assert len(rows) == 300
    assert rows.loc[rows["order"] == "o-007", "label"].tolist() == ["b"]
