"""File sources: text encodings."""

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
