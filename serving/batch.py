"""Batch input: read a CSV, Parquet or JSON upload into an Arrow table and check it against the contract.

(The answer's encoding is serving.encoders'.)

The checks are the contract's one checker (core.data.rules), vectorised with Arrow's compute kernels
(a 100k-row upload is checked in milliseconds, not row by row through pydantic); the single-record
model in serving.schemas is generated from the same rules: every input column present and no other,
nulls only where allowed, numbers finite and in range, integers whole, categories known unless the
contract allows unknown ones, timestamps read the same way. A failure names the column and the first
offending rows (1-based, as in the file).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from fastapi import Request

from core.contract import ROW_KEY, DatasetContract
from core.data.rules import ContractChecker
from core.inference.predictor import columns_from_typed
from core.modeling.compiled import Columns
from serving.schemas import MAX_TEXT

PARQUET_TYPES = ("application/vnd.apache.parquet", "application/x-parquet", "application/parquet")


@dataclass
class BatchInputError(Exception):
    status: int
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.detail


def parse_upload(data: bytes, kind: str) -> pa.Table:
    """`kind`: csv, parquet or json. CSV and Parquet are read by Arrow's C++ readers."""
    if not data.strip():
        raise BatchInputError(422, "body: the upload is empty")
    try:
        if kind == "csv":
            # An empty CSV field is a null for every column, text included (Arrow's default keeps "").
            return pa_csv.read_csv(io.BytesIO(data), convert_options=pa_csv.ConvertOptions(strings_can_be_null=True))
        if kind == "parquet":
            return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
        return json_table(json_records(data))
    except BatchInputError:
        raise
    except Exception as exc:  # any reader failure is the upload's fault: a 422 that says what failed
        raise BatchInputError(422, f"body: malformed {kind} upload: {str(exc)[:300]}") from None


async def read_body(request: Request) -> tuple[bytes, str]:
    """The upload's bytes and its kind (csv, parquet or json), from the content type or the multipart part."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=5)
        except Exception as exc:
            raise BatchInputError(422, f"body: malformed multipart upload: {exc}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BatchInputError(422, "file: a multipart batch needs a 'file' part (CSV or Parquet)")
        name = (upload.filename or "").lower()
        data = await upload.read()
        part_type = (upload.content_type or "").lower()
        kind = "parquet" if name.endswith((".parquet", ".pq")) or part_type in PARQUET_TYPES else "csv"
        if name.endswith(".json") or part_type == "application/json":
            kind = "json"
        return data, kind
    kinds = {"text/csv": "csv", "application/json": "json", **dict.fromkeys(PARQUET_TYPES, "parquet")}
    if ctype not in kinds:
        raise BatchInputError(415, f"content-type: send text/csv, application/json, {PARQUET_TYPES[0]} or multipart")
    return await request.body(), kinds[ctype]


def parse_and_check(
    data: bytes, kind: str, contract: DatasetContract, max_rows: int
) -> tuple[pa.Table, tuple[Columns, dict[str, np.ndarray]]]:
    """`parse_upload` then `check_table`: one call, so that a handler runs both off the event loop."""
    if kind == "json":
        records = json_records(data)
        _refuse_unknown_fields(records, contract)
        table = json_table(records)
    else:
        table = parse_upload(data, kind)
    return table, check_table(table, contract, max_rows)


def json_records(data: bytes) -> list[dict[str, Any]]:
    if not data.strip():
        raise BatchInputError(422, "body: the upload is empty")
    try:
        records = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's stack
        raise BatchInputError(422, f"body: malformed json upload: {str(exc)[:300]}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise BatchInputError(422, "body: a JSON batch must be a list of objects, one per record")
    return records


def json_table(records: list[dict[str, Any]]) -> pa.Table:
    try:
        return pa.Table.from_pandas(pd.DataFrame.from_records(records), preserve_index=False)
    except Exception as exc:  # mixed types Arrow cannot put in one column, say
        raise BatchInputError(422, f"body: malformed json upload: {str(exc)[:300]}") from None


def _refuse_unknown_fields(records: list[dict[str, Any]], contract: DatasetContract) -> None:
    """A JSON batch whose records carry fields the contract does not know is refused before any table is
    built: the same errors the checker gives (missing and extra fields), without first turning, say,
    20,000 unknown keys into 20,000 columns (8 s here)."""
    names: set[str] = set().union(*records) if records else set()
    inputs = contract.input_columns
    extra = sorted(names.difference(inputs, [ROW_KEY]))
    if not extra:
        return
    errors = [{"field": c, "message": "Field required"} for c in inputs if c not in names]
    errors += [{"field": c, "message": "Extra inputs are not permitted"} for c in extra]
    shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:20])
    more = f"; and {len(errors) - 20} more" if len(errors) > 20 else ""
    raise BatchInputError(422, shown + more, errors[:100])


def check_table(table: pa.Table, contract: DatasetContract, max_rows: int) -> tuple[Columns, dict[str, np.ndarray]]:
    """The batch as column arrays (the predictor's input), or BatchInputError naming every faulty column.

    The contract's checker (core.data.rules, the one collection runs) does the work on Arrow arrays; this
    adds the API's limits. Also returns, per column that accepted unknown categories, the mask of rows that
    hold one.
    """
    n = table.num_rows
    if n == 0:
        raise BatchInputError(422, "body: the batch has no rows")
    if n > max_rows:
        raise BatchInputError(413, f"body: the batch has {n} rows, more than the limit of {max_rows}")
    checked = ContractChecker(contract, contract.input_columns, max_text=MAX_TEXT).check(table)
    errors = checked.api_errors()
    if errors:
        detail = "; ".join(
            f"{e['field']}: {e['message']}" + (f" (rows {e['rows']})" if e.get("rows") else "") for e in errors
        )
        raise BatchInputError(422, detail, errors)
    out = columns_from_typed(checked.typed, contract)
    return out, checked.unknown


def chunks(columns: Columns, n_rows: int, size: int) -> Iterator[tuple[int, Columns]]:
    """(offset, columns) slices of at most `size` rows; slicing numpy arrays copies nothing."""
    for start in range(0, n_rows, size):
        yield start, {k: v[start : start + size] for k, v in columns.items()}
