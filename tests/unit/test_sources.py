"""File sources: text encodings; Parquet files read one at a time under one schema; parts of a read (Dask)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from core.data.sources import (
    CannotSplitError,
    FileSource,
    SourceChangedError,
    SourceError,
    SqlSource,
    Watermark,
    Window,
)
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


# ---- parts: the chunks of the read, each read on its own (collection on Dask) ------------------------------
def _same_chunks(source: FileSource | SqlSource, window: Window | None, chunk_rows: int) -> int:
    """Each part read on its own gives the read's chunk at its place; the number of parts."""
    chunks = list(source.read_arrow(window, chunk_rows))
    parts = source.parts(window, chunk_rows)
    read = [source.read_part(window, part) for part in parts]
    assert [r.read for r in read] == [p.rows for p in parts]
    # The source changed after planning: a part planned one row longer than it reads, or (SQL) with another number
    # of its rows before a day's end (a day's row moved across the part's edge: as many rows, other rows).
    with pytest.raises(SourceChangedError, match=f"part {parts[1].index} of the read held"):
        source.read_part(window, replace(parts[1], rows=parts[1].rows + 1))
    spanning = [p for p in parts if p.edges]
    assert bool(spanning) == isinstance(source, SqlSource)
    for part in spanning[:1]:
        (end, before), *rest = part.edges
        with pytest.raises(SourceChangedError, match="before each day's end"):
            source.read_part(window, replace(part, edges=((end, before + 1), *rest)))
    tables = [t for r in read for t in r.tables]
    assert len(tables) == len(chunks)
    for got, expected in zip(tables, chunks, strict=True):
        assert got.equals(expected)
    return len(parts)


def test_parquet_parts_are_the_reads_chunks_across_files_and_row_groups(tmp_path: Path) -> None:
    contract = get_settings().contract
    frame = synthetic_frame(contract, 300, seed=7)
    folder = tmp_path / "parts"
    folder.mkdir()
    frame.iloc[:130].to_parquet(folder / "part-0.parquet", index=False, row_group_size=40)
    frame.iloc[130:200][list(reversed(frame.columns))].to_parquet(folder / "part-1.parquet", index=False)
    frame.iloc[200:].drop(columns=[contract.numeric_features[0]]).to_parquet(
        folder / "part-2.parquet", index=False, row_group_size=33
    )
    source = FileSource(str(folder), "parquet", contract)
    assert _same_chunks(source, None, 70) == 5
    ts = contract.timestamp_column
    assert ts is not None
    since = Watermark(timestamp=frame[ts].sort_values().iloc[50].to_pydatetime())
    assert _same_chunks(source, Window(since=since, until=frame[ts].max().to_pydatetime()), 45) == 7
    (csv := tmp_path / "rows.csv").write_text(frame.to_csv(index=False))
    with pytest.raises(CannotSplitError, match="csv source is not split"):
        FileSource(str(csv), "csv", contract).parts(None, 70)


def _sqlite_table(tmp_path: Path, frame: pd.DataFrame, *, index: bool) -> str:
    """`frame` as table `rows` of a SQLite file, with an index on (timestamp, id) or none; its URL."""
    import sqlalchemy as sa

    contract = get_settings().contract
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = sa.create_engine(url)
    frame.to_sql("rows", engine, index=False)
    if index:
        with engine.begin() as conn:
            conn.execute(
                sa.text(f'CREATE INDEX by_time ON rows ("{contract.timestamp_column}", "{contract.id_column}")')
            )
    engine.dispose()
    return url


def test_sql_parts_are_the_reads_chunks_with_tied_times_and_a_watermark(tmp_path: Path) -> None:
    """Parts placed by each day's row count: many rows share a time (the parts' edges fall inside ties,
    ordered by id) and parts span days; the window starts at a watermark with an id, so the first chunks lose
    rows to the fine filter."""

    contract = get_settings().contract
    ts, key = contract.timestamp_column, contract.id_column
    assert ts is not None and key is not None
    frame = synthetic_frame(contract, 500, seed=11)
    frame[ts] = frame[ts].dt.floor("6h")
    url = _sqlite_table(tmp_path, frame, index=True)
    source = SqlSource(url, contract, table="rows")
    ordered = frame.sort_values([ts, key])
    until = ordered[ts].iloc[-40].to_pydatetime()
    assert _same_chunks(source, Window(since=Watermark(), until=until), 64) > 5
    mark = ordered.iloc[100]
    window = Window(since=Watermark(timestamp=mark[ts].to_pydatetime(), id=str(mark[key])), until=until)
    assert _same_chunks(source, window, 37) > 5
    assert len(source.time_ranges(window)) > 3
    with pytest.raises(SourceError, match="no timestamp_column"):
        source.time_ranges(None)


def test_a_sql_table_without_an_index_on_time_and_id_is_read_by_one_query(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading in parts pays only when an index gives a day's rows in (timestamp, id) order: without one, each
    part's query would scan and sort, so the window is read by one query (and says why); with one, in parts. The
    chunks are the same either way."""
    import logging

    import sqlalchemy as sa

    contract = get_settings().contract
    ts, key = contract.timestamp_column, contract.id_column
    assert ts is not None and key is not None
    frame = synthetic_frame(contract, 400, seed=5)
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = sa.create_engine(url)
    frame.to_sql("rows", engine, index=False)
    window = Window(since=Watermark(), until=frame[ts].max().to_pydatetime())
    expected = list(SqlSource(url, contract, table="rows").read_arrow(window, 60))
    assert len(expected) > 3

    def read_in_parts() -> bool:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="core.data.sources"):
            chunks = list(SqlSource(url, contract, table="rows", readers=2).read_arrow(window, 60))
        assert len(chunks) == len(expected) and all(a.equals(b) for a, b in zip(chunks, expected, strict=True))
        return "not in parts" not in caplog.text

    assert not read_in_parts()
    assert "no index on" in caplog.text and "TEMP B-TREE" in caplog.text
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE INDEX ix_time_id ON rows ("{ts}", "{key}")'))
    engine.dispose()
    assert read_in_parts()


def test_a_window_whose_times_are_text_that_is_not_a_time_is_read_by_one_query(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite keeps text in a timestamp column: a window whose oldest or newest value is not a time cannot be cut
    into days (one range would make every part's OFFSET walk the read from its start), so it is read by one
    query, with the same chunks, and says why."""
    import logging

    contract = get_settings().contract
    ts, key = contract.timestamp_column, contract.id_column
    assert ts is not None and key is not None
    frame = synthetic_frame(contract, 200, seed=3)
    frame[ts] = frame[ts].dt.strftime("%Y-%m-%d %H:%M:%S")
    frame.loc[0, ts] = "2020-13-45 no such day"  # sorts first, inside the window
    url = _sqlite_table(tmp_path, frame, index=True)
    window = Window(since=Watermark(), until=pd.Timestamp(frame[ts].iloc[1:].max()).to_pydatetime())
    expected = list(SqlSource(url, contract, table="rows").read_arrow(window, 30))
    with pytest.raises(CannotSplitError, match="is not a time"):
        SqlSource(url, contract, table="rows").parts(window, 30)
    with caplog.at_level(logging.INFO, logger="core.data.sources"):
        chunks = list(SqlSource(url, contract, table="rows", readers=2).read_arrow(window, 30))
    assert "not in parts" in caplog.text and "2020-13-45" in caplog.text
    # The row that is not a time is in no window (collection quarantines it as unplaceable).
    assert sum(c.num_rows for c in chunks) == 199 and len(chunks) == len(expected)
    assert all(a.equals(b) for a, b in zip(chunks, expected, strict=True))


def test_parts_are_planned_as_the_days_are_counted() -> None:
    """plan_parts yields a chunk as soon as the days it spans are counted; the chunks cover every row once, in
    order, whatever zero-row days and day ends fall on a chunk's edge."""
    from datetime import timedelta

    from core.data.sources import TimeRange, plan_parts

    days = [datetime(2026, 1, 1) + timedelta(days=i) for i in range(1, 9)]
    ranges = [TimeRange(a, b) for a, b in zip([None, *days], [*days, None], strict=True)]
    counts = [0, 5, 10, 0, 0, 7, 3, 10, 0]  # day ends at rows 0, 5, 15, 15, 15, 22, 25, 35
    fed: list[int] = []

    def counted() -> Iterator[int]:
        for c in counts:
            fed.append(c)
            yield c

    parts = plan_parts(ranges, counted(), chunk_rows=5)
    first = next(parts)
    assert len(fed) == 2, "the first chunk before the third day was counted"
    parts_list = [first, *parts]
    assert [p.rows for p in parts_list] == [5] * 7 and [p.index for p in parts_list] == list(range(7))
    positions = []
    firsts = [0, 0, 5, 15, 15, 15, 22, 25, 35]
    for p in parts_list:
        [(span, offset, rows)] = p.ranges
        first_range = next(i for i, r in enumerate(ranges) if r.start == span.start)
        positions.append(firsts[first_range] + offset)
        inside = [(end, before) for end, before in p.edges]
        assert all(0 <= before <= rows for _, before in inside)
    assert positions == list(range(0, 35, 5))
    assert list(plan_parts(ranges, counts, chunk_rows=8))[-1].rows == 35 - 32
    assert list(plan_parts(ranges, [0] * len(ranges), chunk_rows=8)) == []
