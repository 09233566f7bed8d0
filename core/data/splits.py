"""Time-ordered splits of the collected rows: train, validation, test, a frozen holdout, a reference.

Rows are deduplicated by id (the copy written last wins), ordered by (timestamp, id) and cut by the
shares in ``settings.splits``, oldest first; the holdout is the newest slice and is reserved for
promotion decisions. The reference dataset for monitoring is a seeded sample of the train split.

The work streams one date partition at a time (raw snapshots are partitioned by event date, so date
order is time order), which keeps memory flat at 10M rows: pass 1 counts unique ids per date from
the id column alone, pass 2 reads each date, sorts it and routes its rows to per-split writers.

A version is the hash of the input fingerprints and the split config: the same inputs give the same
version, and an existing version directory is never rewritten, so a holdout, once cut for a data
window, stays frozen.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.contract import DatasetContract
from core.data.snapshots import (
    PARQUET_OPTIONS,
    StreamingFingerprint,
    arrow_schema,
    raw_part_files,
    to_arrow,
    utc_now,
    write_json_atomic,
)
from core.settings import Settings

SPLITS = ("train", "validation", "test", "holdout")
REFERENCE = "reference"


class PreprocessError(RuntimeError):
    """Preprocessing cannot build splits from what was collected."""


def split_bounds(n_rows: int, shares: dict[str, float]) -> dict[str, tuple[int, int]]:
    """[start, end) row positions of each split in time order; the shares sum to 1."""
    bounds: dict[str, tuple[int, int]] = {}
    cumulative, start = 0.0, 0
    for i, name in enumerate(SPLITS):
        cumulative += shares[name]
        end = n_rows if i == len(SPLITS) - 1 else round(n_rows * cumulative)
        bounds[name] = (start, end)
        start = end
    return bounds


def newest_days(files: list[Path], window_days: int | None) -> list[Path]:
    """The raw partition files (``date=YYYY-MM-DD/part-*.parquet``) of the newest `window_days` calendar days."""
    if not window_days:
        return files
    dates = [date.fromisoformat(f.parent.name.removeprefix("date=")) for f in files]
    first = max(dates) - timedelta(days=window_days - 1)
    return [f for f, d in zip(files, dates, strict=True) if d >= first]


def version_of(inputs: list[str], settings: Settings) -> str:
    payload = {
        "inputs": sorted(inputs),
        "splits": settings.splits.model_dump(),
        "seed": settings.seed,
        "columns": settings.contract.column_names,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class _SplitStats:
    rows: int = 0
    positives: int = 0
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    fingerprint: StreamingFingerprint = field(default_factory=StreamingFingerprint)

    def add(self, rows: pd.DataFrame, table: pa.Table, contract: DatasetContract) -> None:
        if rows.empty:
            return
        self.rows += len(rows)
        if contract.is_classification:
            self.positives += int((rows[contract.target.name] == contract.target.positive_class).sum())
        ts = rows[contract.timestamp_column]
        self.start = ts.iloc[0] if self.start is None else self.start
        self.end = ts.iloc[-1]
        self.fingerprint.update(table)

    def to_dict(self, contract: DatasetContract) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "fingerprint": self.fingerprint.hexdigest(),
            "time_min": None if self.start is None else self.start.isoformat(),
            "time_max": None if self.end is None else self.end.isoformat(),
            "positive_rate": self.positives / self.rows if self.rows and contract.is_classification else None,
        }


def _unique_ids(files: list[Path], id_column: str) -> int:
    ids = pa.concat_tables([pq.read_table(f, columns=[id_column]) for f in files]).column(0)
    return len(ids.unique())


def _read_date(files: list[Path], contract: DatasetContract) -> pd.DataFrame:
    """One date's rows, deduplicated by id (the file written last wins), ordered by (time, id)."""
    frame = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
    frame = frame.drop_duplicates(contract.id_column, keep="last")
    return frame.sort_values([contract.timestamp_column, contract.id_column], kind="stable").reset_index(drop=True)


def build_splits(settings: Settings) -> dict[str, Any]:
    """Write ``processed/<version>/`` (splits + manifest) and point ``processed/latest.json`` at it."""
    contract = settings.contract
    data_dir = settings.data_dir
    raw = data_dir / "raw"
    files = raw_part_files(raw)
    if not files:
        raise PreprocessError(f"no raw snapshots under {raw}: run collection first")
    files = newest_days(files, settings.splits.window_days)
    inputs = [str(f.relative_to(raw)) for f in files]
    version = version_of(inputs, settings)
    processed = data_dir / "processed"
    out = processed / version
    if (out / "manifest.json").exists():
        manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
        _point_latest(processed, version)
        print(f"preprocess: version {version} already built from the same inputs; nothing rewritten ({out})")
        return {**manifest, "reused": True}

    by_date = [(day, list(group)) for day, group in groupby(files, key=lambda p: p.parent.name)]
    # Pass 1: unique ids per date (id column only), to place every row in time order.
    counts = [_unique_ids(group, contract.id_column) for _, group in by_date]
    total = sum(counts)
    shares = {name: getattr(settings.splits, name) for name in SPLITS}
    bounds = split_bounds(total, shares)
    empty = [name for name, (lo, hi) in bounds.items() if hi <= lo]
    if empty:
        raise PreprocessError(f"{total} collected rows are too few for splits {shares}: {empty} would be empty")
    train_rows = bounds["train"][1]
    rng = np.random.default_rng(settings.seed)
    reference_pos = np.sort(rng.choice(train_rows, size=min(settings.splits.reference_rows, train_rows), replace=False))

    tmp = processed / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    schema = arrow_schema(contract)
    writers = {name: pq.ParquetWriter(tmp / f"{name}.parquet", schema, **PARQUET_OPTIONS) for name in SPLITS}
    stats = {name: _SplitStats() for name in (*SPLITS, REFERENCE)}
    reference_parts: list[pd.DataFrame] = []
    offset = 0
    try:
        # Pass 2: route each date's rows (already in time order) to the splits they fall in.
        for (_, group), n in zip(by_date, counts, strict=True):
            frame = _read_date(group, contract)
            if len(frame) != n:
                raise PreprocessError(f"raw partition {group[0].parent} changed while preprocessing")
            for name, (lo, hi) in bounds.items():
                a, b = max(lo, offset) - offset, min(hi, offset + n) - offset
                if a < b:
                    rows = frame.iloc[a:b]
                    table = to_arrow(rows, schema)
                    writers[name].write_table(table)
                    stats[name].add(rows, table, contract)
            picked = reference_pos[(reference_pos >= offset) & (reference_pos < offset + n)] - offset
            if picked.size:
                reference_parts.append(frame.iloc[picked])
            offset += n
    finally:
        for w in writers.values():
            w.close()
    reference = pd.concat(reference_parts, ignore_index=True)
    reference_table = to_arrow(reference, schema)
    pq.write_table(reference_table, tmp / f"{REFERENCE}.parquet", **PARQUET_OPTIONS)
    stats[REFERENCE].add(reference, reference_table, contract)

    manifest = {
        "version": version,
        "created_at": utc_now(),
        "contract": contract.name,
        "rows": total,
        "split_config": settings.splits.model_dump(),
        "splits": {name: stats[name].to_dict(contract) for name in (*SPLITS, REFERENCE)},
        "holdout": {
            "frozen": True,
            "note": "newest rows, reserved for promotion decisions; this version directory is never rewritten",
        },
        "reference": {"sampled_from": "train", "seed": settings.seed, "rows": len(reference)},
        "inputs": {"raw_files": len(files), "raw_fingerprints": [f.stem.removeprefix("part-") for f in files]},
    }
    write_json_atomic(tmp / "manifest.json", manifest)
    try:
        tmp.rename(out)  # atomic: a version directory appears complete or not at all
    except OSError:
        if not (out / "manifest.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run built the same version first
    _point_latest(processed, version)
    print(f"preprocess: version {version}: {total} rows -> {out}")
    return {**manifest, "reused": False}


def _point_latest(processed: Path, version: str) -> None:
    write_json_atomic(processed / "latest.json", {"version": version, "updated_at": utc_now()})
