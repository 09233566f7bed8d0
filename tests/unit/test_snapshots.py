"""Snapshot files: what a fingerprint hashes, and how part files are written for any contract."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.contract import ROW_KEY
from core.data.rules import arrow_schema
from core.data.snapshots import StreamingFingerprint, fingerprint, write_partitions
from core.settings import load_settings
from demo.simulator import simulate
from tests.generated import contract_for, frame_for


def _ipc_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return sink.getvalue().to_pybytes()


def test_a_fingerprint_is_the_sha256_of_the_rows_arrow_ipc_stream() -> None:
    """Part files are named by their fingerprint and kept across versions: what it hashes must not change."""
    table = pa.table({"id": ["a", None, "c", "d"], "x": [1.5, 2.0, None, 4.0], "n": pa.array([1, 2, 3, None])})
    pieces = pa.concat_tables([table.slice(0, 3), table.slice(1, 3)])  # chunked, sliced, with nulls
    for rows in (table, table.slice(1, 2), pieces):
        assert fingerprint(rows) == hashlib.sha256(_ipc_stream(rows)).hexdigest()
    streamed = StreamingFingerprint()
    streamed.update(table.slice(0, 2))
    streamed.update(table.slice(0, 0))  # an empty piece adds nothing
    streamed.update(pieces)
    expected = hashlib.sha256(_ipc_stream(table.slice(0, 2)) + _ipc_stream(pieces)).hexdigest()
    assert streamed.hexdigest() == expected


def _encodings(path: Path) -> dict[str, tuple[bool, bool]]:
    """Per column: (dictionary-encoded, has statistics)."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    out = {}
    for i in range(meta.num_columns):
        col = meta.column(i)
        out[col.path_in_schema] = ("RLE_DICTIONARY" in col.encodings, col.statistics is not None)
    return out


def test_part_files_dictionary_encode_repeating_columns_and_keep_min_max_of_numbers_and_times(tmp_path: Path) -> None:
    """A generated, non-fraud contract without an id (collection derives a row key) and the fraud contract."""
    contract = contract_for("multiclass")
    frame, labels = frame_for(contract, 2_000, seed=3)
    frame[contract.target.name] = labels
    frame[ROW_KEY] = [f"key-{i}" for i in range(len(frame))]
    table = pa.Table.from_pandas(frame, schema=arrow_schema(contract), preserve_index=False)
    parts = write_partitions(table, tmp_path / "generated", contract)
    assert parts
    for part in parts:
        path = tmp_path / "generated" / part.path
        encodings = _encodings(path)
        assert encodings["2nd plan"] == (True, False)  # a category: text, no min/max
        assert encodings[contract.target.name][0]  # text labels repeat
        assert encodings["spend/€"] == (False, True)  # a float: no dictionary, statistics kept
        assert encodings["Seen at"] == (False, True)
        assert encodings[ROW_KEY] == (False, False)  # the key: unique, and text
        assert pq.read_table(path).equals(pq.read_table(path).cast(arrow_schema(contract)))
    written = pa.concat_tables(pq.read_table(tmp_path / "generated" / p.path) for p in parts)
    assert written.num_rows == len(frame)

    fraud = load_settings().contract
    rows = simulate(start="2026-01-01", days=1, rows_per_day=300, true_labels=True, contract=fraud)
    rows["is_fraud"] = rows["is_fraud"].astype("int64")
    [part] = write_partitions(rows, tmp_path / "fraud", fraud)
    encodings = _encodings(tmp_path / "fraud" / part.path)
    assert encodings["transaction_id"] == (False, False)
    assert encodings["channel"] == (True, False) and encodings["txn_count_1h"] == (True, True)
    assert encodings["event_time"] == (False, True)
    assert encodings["amount"] == (False, True)
