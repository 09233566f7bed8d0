"""Batch input: read a CSV, Parquet or JSON upload into an Arrow table and check it against the contract.

(The answer's encoding is serving.encoders'.)

The checks are vectorised with Arrow's compute kernels (a 100k-row upload is checked in
milliseconds, not row by row through pydantic) and enforce the same rules as the single-record model
in serving.schemas: every input column present and no other, nulls only where allowed, numbers finite
and in range, integers whole, categories known unless the contract allows unknown ones. A failure
names the column and the first offending rows (1-based, as in the file).
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
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from fastapi import Request

from core.contract import DatasetContract
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
        records = json.loads(data)
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise BatchInputError(422, "body: a JSON batch must be a list of objects, one per record")
        return pa.Table.from_pandas(pd.DataFrame.from_records(records), preserve_index=False)
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
    table = parse_upload(data, kind)
    return table, check_table(table, contract, max_rows)


def _rows(mask: np.ndarray | pd.Series, limit: int = 5) -> list[int]:
    return [int(i) + 1 for i in np.flatnonzero(np.asarray(mask))[:limit]]


def _mask(a: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(a.to_numpy(zero_copy_only=False), dtype=bool)


def _dictionary(a: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(distinct values, per-row index into them); a null row gets index len(distinct)."""
    encoded = pc.dictionary_encode(a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a)
    codes = encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)
    return encoded.dictionary, codes


def check_table(table: pa.Table, contract: DatasetContract, max_rows: int) -> tuple[Columns, dict[str, np.ndarray]]:
    """The batch as column arrays (the predictor's input), or BatchInputError naming every faulty column.

    Also returns, per column that accepted unknown categories, the mask of rows that hold one. Every check runs on Arrow
    arrays with Arrow's compute kernels; nothing loops over rows in Python.
    """
    n = table.num_rows
    if n == 0:
        raise BatchInputError(422, "body: the batch has no rows")
    if n > max_rows:
        raise BatchInputError(413, f"body: the batch has {n} rows, more than the limit of {max_rows}")
    expected = contract.input_columns
    names = table.column_names
    errors: list[dict[str, Any]] = []
    errors += [{"field": c, "message": "Field required"} for c in expected if c not in names]
    errors += [{"field": str(c), "message": "Extra inputs are not permitted"} for c in names if c not in expected]
    unknown: dict[str, np.ndarray] = {}
    out: Columns = {}
    for name in (c for c in expected if c in names):
        col = contract.column(name)
        a = table.column(name)
        null = _mask(a.is_null())
        present = ~null

        def fail(message: str, mask: Any, field: str = name) -> None:
            errors.append({"field": field, "message": message, "rows": _rows(mask)})

        if not col.nullable and null.any():
            fail("null where the contract forbids it", null)
        t = a.type
        if col.type in ("float", "int", "bool"):
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
                fail("Input should be a valid number", present)
                continue
            if pa.types.is_boolean(t) and col.type != "bool":
                fail("Input should be a valid number", present)
                continue
            v = np.asarray(a.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
            if (~np.isfinite(v) & present).any():
                fail("Input should be a finite number", ~np.isfinite(v) & present)
                continue
            fraction = present & (v != np.trunc(v)) if col.type in ("int", "bool") else None
            if fraction is not None and fraction.any():
                fail("Input should be a valid integer", fraction)
            if col.type == "bool" and (present & ~np.isin(v, (0.0, 1.0))).any():
                fail("Input should be a valid boolean", present & ~np.isin(v, (0.0, 1.0)))
            if col.min is not None and (present & (v < col.min)).any():
                fail(f"Input should be greater than or equal to {col.min:g}", present & (v < col.min))
            if col.max is not None and (present & (v > col.max)).any():
                fail(f"Input should be less than or equal to {col.max:g}", present & (v > col.max))
            out[name] = v
        elif col.type == "datetime":
            if pa.types.is_timestamp(t):
                # An aware timestamp is stored as UTC instants: dropping the zone keeps naive UTC.
                ts = np.asarray(a.cast(pa.timestamp("s")).to_numpy(zero_copy_only=False), dtype="datetime64[s]")
            elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
                parsed = pd.to_datetime(a.to_pandas(), errors="coerce", utc=True, format="mixed")
                ts = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[s]")
            else:  # numbers or booleans are not timestamps here
                fail("Input should be a valid datetime", present)
                continue
            bad = np.isnat(ts) & present
            if bad.any():
                fail("Input should be a valid datetime", bad)
                continue
            out[name] = ts
        else:
            if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
                fail("Input should be a valid string", present)
                continue
            if pa.types.is_null(t):
                out[name] = np.full(n, None, dtype=object)
                continue
            if col.type != "category":  # free text (ids, notes): mostly distinct values, checked row by row
                lengths = pc.utf8_length(a)
                if (pc.max(lengths).as_py() or 0) > MAX_TEXT:
                    fail(
                        f"String should have at most {MAX_TEXT} characters",
                        _mask(pc.greater(lengths, MAX_TEXT).fill_null(False)),
                    )
                    continue
                out[name] = np.asarray(a.to_numpy(zero_copy_only=False), dtype=object)
                continue
            # A category column holds few distinct values: check each once, then map the result to rows.
            distinct, codes = _dictionary(a)
            long_rows = np.append(_mask(pc.greater(pc.utf8_length(distinct), MAX_TEXT)), False)[codes]
            if long_rows.any():
                fail(f"String should have at most {MAX_TEXT} characters", long_rows)
                continue
            known = np.append(_mask(pc.is_in(distinct, value_set=pa.array(list(col.categories or ())))), True)
            is_unknown = ~known[codes]  # a null row indexes the appended True: not unknown
            if is_unknown.any():
                if col.allow_unknown:
                    unknown[name] = is_unknown
                else:
                    fail(f"Input should be one of {list(col.categories or ())}", is_unknown)
            # One Python str per distinct value, not per row.
            out[name] = np.array([*distinct.to_pylist(), None], dtype=object)[codes]
    if errors:
        detail = "; ".join(
            f"{e['field']}: {e['message']}" + (f" (rows {e['rows']})" if e.get("rows") else "") for e in errors
        )
        raise BatchInputError(422, detail, errors)
    return out, unknown


def chunks(columns: Columns, n_rows: int, size: int) -> Iterator[tuple[int, Columns]]:
    """(offset, columns) slices of at most `size` rows; slicing numpy arrays copies nothing."""
    for start in range(0, n_rows, size):
        yield start, {k: v[start : start + size] for k, v in columns.items()}
