"""File sources: text encodings; Parquet files read one at a time under one schema."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core.data.sources import FileSource, SourceError, Watermark, Window
from core.inference.sample import synthetic_frame
from core.settings import get_settings


def _latin1_csv(tmp_path: Path) -> Path:
    frame = synthetic_frame(get_settings().contract, 20, seed=5)
    frame["transaction_id"] = [f"café-{i}" for i in range(len(frame))]  # é is one byte, 0xe9, in latin-1
    path = tmp_path / "rows.csv"
    frame.to_csv(path, index=False, encoding="latin-1")
    return path


def test_a_file_that_is_not_utf8_fails_naming_the_file_and_the_setting(tmp_path: Path) -> None:
    path = _latin1_csv(tmp_path)
    source = FileSource(str(path), "csv", get_settings().contract)
    with pytest.raises(SourceError) as raised:
        source.clock()  # the first full read
    message = str(raised.value)
    assert str(path) in message
    assert "utf-8" in message
    assert "source.encoding" in message


def test_the_configured_encoding_reads_it(tmp_path: Path) -> None:
    path = _latin1_csv(tmp_path)
    source = FileSource(str(path), "csv", get_settings().contract, encoding="latin-1")
    clock = source.clock()
    assert clock is not None
    rows = pd.concat(source.read(Window(since=Watermark(), until=clock), chunk_rows=1_000))
    assert len(rows) == 20
    assert rows["transaction_id"].iloc[3] == "café-3"


def test_parquet_files_read_one_at_a_time_keep_the_first_files_columns(tmp_path: Path) -> None:
    """Files whose columns come in another order, or lack one, are read under the first file's schema (as
    one dataset scan read them), in chunks of exactly chunk_rows rows across file boundaries."""
    contract = get_settings().contract
    frame = synthetic_frame(contract, 300, seed=7)
    folder = tmp_path / "parts"
    folder.mkdir()
    frame.iloc[:100].to_parquet(folder / "part-0.parquet", index=False)
    frame.iloc[100:200][list(reversed(frame.columns))].to_parquet(folder / "part-1.parquet", index=False)
    missing = contract.numeric_features[0]
    frame.iloc[200:].drop(columns=[missing]).to_parquet(folder / "part-2.parquet", index=False)

    source = FileSource(str(folder), "parquet", contract)
    chunks = list(source.read_arrow(None, chunk_rows=70))
    assert [c.num_rows for c in chunks] == [70, 70, 70, 70, 20]
    assert all(c.column_names == list(frame.columns) for c in chunks)
    rows = pd.concat([c.to_pandas() for c in chunks], ignore_index=True)
    assert rows[contract.id_column].tolist() == frame[contract.id_column].tolist()
    assert rows[missing].iloc[200:].isna().all() and rows[missing].iloc[:200].notna().all()


def test_a_parquet_file_whose_column_does_not_read_as_the_first_files_names_the_file(tmp_path: Path) -> None:
    contract = get_settings().contract
    frame = synthetic_frame(contract, 40, seed=3)
    frame.iloc[:20].to_parquet(tmp_path / "a.parquet", index=False)
    later = frame.iloc[20:].copy()
    later["amount"] = "n/a"
    later.to_parquet(tmp_path / "b.parquet", index=False)
    with pytest.raises(SourceError) as raised:
        list(FileSource(str(tmp_path), "parquet", contract).read_arrow(None, chunk_rows=100))
    message = str(raised.value)
    assert "b.parquet" in message and "a.parquet" in message and "n/a" in message
