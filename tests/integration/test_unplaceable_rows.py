"""Source rows with no usable timestamp: no collection window can hold them, so collection
quarantines them (once) with a reason instead of leaving them unseen, and they do not block the
valid rows around them (found by `make chaos`, scenario corrupt_batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from core.data.collection import run_collection
from core.inference.sample import synthetic_frame
from core.settings import get_settings
from demo.simulator import write_warehouse


def _add_rows_without_time(url: str, n: int = 6) -> list[str]:
    engine = sa.create_engine(url)
    try:
        rows = pd.read_sql("SELECT * FROM transactions LIMIT 6", engine).head(n)
        rows["transaction_id"] = [f"no-time-{i}" for i in range(len(rows))]
        rows["event_time"] = [None if i % 2 else "not a time" for i in range(len(rows))]
        rows.to_sql("transactions", engine, if_exists="append", index=False)
    finally:
        engine.dispose()
    return rows["transaction_id"].tolist()


def test_rows_without_a_time_are_quarantined_once(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    settings = get_settings()
    write_warehouse(settings.warehouse_url, days=4, rows_per_day=200, contract=settings.contract)
    bad = _add_rows_without_time(settings.warehouse_url)

    first = run_collection(settings)  # no as_of: the clock must ignore the text that sorts after every time
    assert first["status"] == "succeeded"
    assert first["unusable_timestamps"] == len(bad)
    assert first["unplaceable_quarantined"] == len(bad)
    quarantined = pd.read_parquet(settings.data_dir / first["quarantine_file"])
    mine = quarantined[quarantined["transaction_id"].isin(bad)]
    assert sorted(mine["transaction_id"]) == sorted(bad)
    assert mine["_reason"].str.contains("event_time: null or not a timestamp").all()
    assert first["rows_loaded"] > 0

    # An explicit start: the simulator continues after MAX(event_time), which the text now tops.
    write_warehouse(settings.warehouse_url, start="2026-01-05", days=1, rows_per_day=200, contract=settings.contract)
    second = run_collection(settings)
    assert second["status"] == "succeeded"
    assert second["unusable_timestamps"] == len(bad), "still reported while they sit in the source"
    assert second["unplaceable_quarantined"] == 0, "quarantined once, not on every run"


def test_a_file_source_counts_them_in_the_clocks_one_scan(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV source collected without as_of: the clock's scan of the timestamp column also counts the rows
    without a usable time, so the run scans that column once, not again beside its read."""
    from core.data.sources import FileSource

    contract = get_settings().contract
    ts = contract.timestamp_column
    assert ts is not None
    frame = synthetic_frame(contract, 300, seed=4)
    frame[contract.target.name] = [contract.classes[i % 2] for i in range(len(frame))]
    frame[ts] = frame[ts].astype(str)
    frame.loc[[3, 8], ts] = ["not a time", None]
    frame.to_csv(tmp_path / "rows.csv", index=False)
    monkeypatch.setenv("MLOPS_SOURCE__KIND", "csv")
    monkeypatch.setenv("MLOPS_SOURCE__PATH", str(tmp_path / "rows.csv"))
    scans = []
    chunks = FileSource._chunks

    def counted(self: FileSource, chunk_rows: int, columns: list[str] | None = None) -> Any:
        if columns == [ts]:
            scans.append(chunk_rows)
        return chunks(self, chunk_rows, columns)

    monkeypatch.setattr(FileSource, "_chunks", counted)
    manifest = run_collection(get_settings(), max_bad_share=0.5)
    assert manifest["unusable_timestamps"] == 2 and manifest["unplaceable_quarantined"] == 2
    assert len(scans) == 1, scans
