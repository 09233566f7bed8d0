"""Splits of the collected rows: train, validation, test, a frozen holdout, and a reference.

Rows are deduplicated by key (the id, or the row key collection derives; the copy published last wins) and
cut by the shares in ``settings.splits``. The holdout is reserved for promotion decisions; the reference
dataset for monitoring is a seeded sample of the train split. ``splits.strategy``:

* ``time`` (the default when the contract has a timestamp): rows ordered by (timestamp, key), oldest
  first, so the holdout is the newest slice. The work streams one date partition at a time (raw
  snapshots are partitioned by event date, so date order is time order), which keeps memory flat at
  10M rows: pass 1 counts unique keys per date from the key column alone, pass 2 reads each date, sorts
  it and writes its rows of each split as the split's piece (``<split>/part-<date>.parquet``); both run one
  task per date on the Dask cluster at ``dask.address``. ``splits.window_days`` keeps only the newest days.
* ``stratified`` (the default for a classification contract without a timestamp): each class is cut
  by the shares separately, in a seeded random order, so every split has the class balance of the whole.
* ``random`` (the default for regression without a timestamp): one seeded random order, cut by the shares.
* ``group``: rows with the same ``splits.group_column`` value stay in one split (no customer in both
  training and holdout); groups are ordered at random and cut by their rows.

For classification, preprocessing refuses splits a model could not be judged on: a class of the training
split missing from validation or holdout, or a class the training split lacks that appears later.

A version is the hash of the input fingerprints and the split config: the same inputs give the same
version, and an existing version directory is never rewritten, so a holdout, once cut for a data
window, stays frozen.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.contract import DatasetContract
from core.data.rules import arrow_schema, distinct_count
from core.data.snapshots import (
    fingerprint,
    parquet_options,
    raw_part_files,
    to_arrow,
    utc_now,
    write_json_atomic,
)
from core.settings import Settings

log = logging.getLogger(__name__)

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
        "strategy": strategy_of(settings),
        "seed": settings.seed,
        "columns": settings.contract.column_names,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def strategy_of(settings: Settings) -> str:
    """The configured strategy, `auto` resolved: time with a timestamp, else stratified (classification)
    or random."""
    strategy = settings.splits.strategy
    contract = settings.contract
    if strategy != "auto":
        return strategy
    if contract.timestamp_column is not None:
        return "time"
    return "stratified" if contract.is_classification else "random"


@dataclass
class _SplitStats:
    """What the manifest says of a split. Its fingerprint is the sha256 of its pieces' fingerprints in order
    (a piece: the rows of one date, or the whole split when it is not cut by time), so pieces fingerprinted by
    different processes give the same fingerprint as one process."""

    rows: int = 0
    positives: int = 0
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    pieces: list[str] = field(default_factory=list)
    classes: Counter[str] = field(default_factory=Counter)

    def add(self, table: pa.Table, contract: DatasetContract) -> None:
        """One piece of the split (its rows in order)."""
        if not table.num_rows:
            return
        self.rows += table.num_rows
        if contract.is_classification:
            labels = table.column(contract.target.name).to_pandas()
            self.positives += int((labels == contract.target.positive_class).sum())
            self.classes.update({str(k): int(v) for k, v in labels.value_counts().items()})
        if contract.timestamp_column is not None:
            bounds = pc.min_max(table.column(contract.timestamp_column))
            self._span(pd.Timestamp(bounds["min"].value), pd.Timestamp(bounds["max"].value))
        self.pieces.append(fingerprint(table))

    def merge(self, later: _SplitStats) -> None:
        """The pieces of `later` after this one's."""
        self.rows += later.rows
        self.positives += later.positives
        self.classes.update(later.classes)
        if later.start is not None and later.end is not None:
            self._span(later.start, later.end)
        self.pieces.extend(later.pieces)

    def _span(self, low: pd.Timestamp, high: pd.Timestamp) -> None:
        self.start = low if self.start is None else min(self.start, low)
        self.end = high if self.end is None else max(self.end, high)

    def to_dict(self, contract: DatasetContract) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "fingerprint": hashlib.sha256("".join(self.pieces).encode()).hexdigest(),
            "pieces": len(self.pieces),
            "time_min": None if self.start is None else self.start.isoformat(),
            "time_max": None if self.end is None else self.end.isoformat(),
            "positive_rate": self.positives / self.rows if self.rows and contract.task == "binary" else None,
            "classes": dict(sorted(self.classes.items())) if contract.is_classification else None,
        }


def _unique_keys(files: list[Path], key_column: str) -> int:
    keys = pa.concat_tables([pq.read_table(f, columns=[key_column]) for f in files]).column(0)
    return distinct_count(keys, count_null=True)


def _read_table(files: list[Path], contract: DatasetContract, schema: pa.Schema, unique_keys: int) -> pa.Table:
    """:func:`_read_rows` in Arrow: a day's rows deduplicated by key and ordered by (time, key), no pandas
    unless a key repeats (then the pandas path decides which copy stays, as it always has). `unique_keys` is
    the day's count of distinct keys (pass 1's): as many rows as keys, no key repeats."""
    table = pa.concat_tables([pq.read_table(f, schema=schema) for f in files]).combine_chunks()
    key = contract.key_column
    if table.num_rows != unique_keys:
        return to_arrow(_read_rows(files, contract), schema)
    if _in_order(table, contract):  # the usual case: collection wrote the day in (time, key) order
        return table
    order = [(c, "ascending") for c in (contract.timestamp_column, key) if c]
    return table.take(pc.sort_indices(table, sort_keys=order))


def _in_order(table: pa.Table, contract: DatasetContract) -> bool:
    """Whether the rows are already ordered by (time, key) (keys compared only where times tie)."""
    key = table.column(contract.key_column)
    ts_col = contract.timestamp_column
    if ts_col is None or table.num_rows < 2:
        return table.num_rows < 2
    ts = np.asarray(table.column(ts_col).combine_chunks().view(pa.int64()).to_numpy(zero_copy_only=False))
    step = np.diff(ts)
    if (step < 0).any():
        return False
    ties = np.flatnonzero(step == 0)
    if not ties.size:
        return True
    before = key.take(pa.array(ties))
    after = key.take(pa.array(ties + 1))
    return bool(pc.all(pc.less(before, after)).as_py())


def _read_rows(files: list[Path], contract: DatasetContract) -> pd.DataFrame:
    """Rows of `files`, deduplicated by key (the file published last wins), ordered by (time, key) when the
    contract has a timestamp, else by key."""
    key = contract.key_column
    frame = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
    frame = frame.drop_duplicates(key, keep="last")
    order = [c for c in (contract.timestamp_column, key) if c]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def _uniform(values: pd.Series, seed: int) -> np.ndarray:
    """A seeded, reproducible number in [0, 1) per value (the same value always gets the same number)."""
    hashed = pd.util.hash_pandas_object(values.astype(str), index=False, hash_key=f"{seed:016d}"[:16])
    return hashed.to_numpy().astype(np.float64) / 2.0**64


def assign_splits(frame: pd.DataFrame, strategy: str, shares: dict[str, float], settings: Settings) -> np.ndarray:
    """The split index (0 = train ... 3 = holdout) of each row of an unordered frame."""
    contract = settings.contract
    out = np.empty(len(frame), dtype=np.int64)
    if strategy == "group":
        column = settings.splits.group_column
        assert column is not None  # settings refuse group without a group column
        groups = frame[column].astype(str).where(frame[column].notna(), "__missing__")
        sizes = groups.value_counts(sort=False)
        order = pd.Series(_uniform(pd.Series(sizes.index), settings.seed), index=sizes.index).sort_values().index
        cumulative = sizes.loc[order].cumsum().to_numpy()
        bounds = split_bounds(len(frame), shares)
        ends = [bounds[name][1] for name in SPLITS]
        # A group goes to the split its last row falls in: whole groups, shares as close as groups allow.
        group_split = {g: int(np.searchsorted(ends, c, side="left")) for g, c in zip(order, cumulative, strict=True)}
        return groups.map(group_split).to_numpy(dtype=np.int64)
    u = _uniform(frame[contract.key_column], settings.seed)
    if strategy == "stratified":
        strata = frame[contract.target.name].astype(str).to_numpy()
    else:
        strata = np.zeros(len(frame), dtype=object)
    for stratum in pd.unique(strata):
        rows = np.flatnonzero(strata == stratum)
        ranked = rows[np.argsort(u[rows], kind="stable")]
        for i, name in enumerate(SPLITS):
            lo, hi = split_bounds(len(ranked), shares)[name]
            out[ranked[lo:hi]] = i
    return out


def check_classes(stats: dict[str, _SplitStats], contract: DatasetContract) -> list[str]:
    """Refuse splits a classifier could not be judged on; return warnings for the rest."""
    if not contract.is_classification:
        return []
    train = set(stats["train"].classes)
    for later in ("validation", "holdout"):
        lacking = sorted(train - set(stats[later].classes))
        if lacking:
            raise PreprocessError(
                f"class(es) {lacking} of the training split are missing from the {later} split: the model "
                f"could not be judged on them. Collect more rows, or use splits.strategy stratified"
            )
    for later in ("validation", "test", "holdout"):
        unseen = sorted(set(stats[later].classes) - train)
        if unseen:
            raise PreprocessError(
                f"the training split lacks class(es) {unseen} that appear in the {later} split: the model "
                f"could never predict them. Collect more rows, or use splits.strategy stratified"
            )
    never = sorted({str(c) for c in contract.classes} - train)
    return [f"class(es) {never} of target.classes never occur in the collected rows"] if never else []


def build_splits(settings: Settings) -> dict[str, Any]:
    """Write ``processed/<version>/`` (splits + manifest) and point ``processed/latest.json`` at it."""
    contract = settings.contract
    data_dir = settings.data_dir
    raw = data_dir / "raw"
    every_file = raw_part_files(raw)
    if not every_file:
        raise PreprocessError(f"no raw snapshots under {raw}: run collection first")
    strategy = strategy_of(settings)
    files = newest_days(every_file, settings.splits.window_days) if contract.is_ordered else every_file
    warnings = _window_warning(every_file, files, settings)
    inputs = [str(f.relative_to(raw)) for f in files]
    version = version_of(inputs, settings)
    processed = data_dir / "processed"
    out = processed / version
    if (out / "manifest.json").exists():
        manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
        _point_latest(processed, version)
        print(f"preprocess: version {version} already built from the same inputs; nothing rewritten ({out})")
        return {**manifest, "reused": True}

    tmp = processed / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    schema = arrow_schema(contract)
    options = parquet_options(contract, schema)
    try:
        if strategy == "time":
            total, stats, reference = _time_splits(files, tmp, settings)
        else:
            total, stats, reference = _unordered_splits(files, strategy, tmp, schema, settings)
        warnings += check_classes(stats, contract)
        _write_piece(reference, tmp, REFERENCE, 0, options)
        stats[REFERENCE].add(reference, contract)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for line in warnings:
        log.warning("preprocess: %s", line)
        print(f"preprocess: WARNING: {line}")
    manifest = {
        "version": version,
        "created_at": utc_now(),
        "contract": contract.name,
        "rows": total,
        "strategy": strategy,
        "split_config": settings.splits.model_dump(),
        "splits": {name: stats[name].to_dict(contract) for name in (*SPLITS, REFERENCE)},
        "holdout": {
            "frozen": True,
            "note": ("newest rows" if strategy == "time" else f"a {strategy} share of the rows")
            + ", reserved for promotion decisions; this version directory is never rewritten",
        },
        "reference": {"sampled_from": "train", "seed": settings.seed, "rows": reference.num_rows},
        "inputs": {"raw_files": len(files), "raw_fingerprints": [f.stem.removeprefix("part-") for f in files]},
        "warnings": warnings,
    }
    write_json_atomic(tmp / "manifest.json", manifest)
    try:
        tmp.rename(out)  # atomic: a version directory appears complete or not at all
    except OSError:
        if not (out / "manifest.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run built the same version first
    _point_latest(processed, version)
    print(f"preprocess: version {version}: {total} rows ({strategy} splits) -> {out}")
    return {**manifest, "reused": False}


def _window_warning(every_file: list[Path], kept: list[Path], settings: Settings) -> list[str]:
    """A warning when splits.window_days leaves out more than half of the collected rows."""
    if len(kept) == len(every_file):
        return []
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in every_file)
    used = sum(pq.ParquetFile(f).metadata.num_rows for f in kept)
    if used * 2 >= total:
        return []
    return [
        f"splits.window_days {settings.splits.window_days} keeps {used} of {total} collected rows "
        f"({used / total:.0%}); unset it (null) to split every row"
    ]


_Splits = tuple[int, dict[str, _SplitStats], pa.Table]


def _bounds(total: int, settings: Settings) -> dict[str, tuple[int, int]]:
    shares = {name: getattr(settings.splits, name) for name in SPLITS}
    bounds = split_bounds(total, shares)
    empty = [name for name, (lo, hi) in bounds.items() if hi <= lo]
    if empty:
        raise PreprocessError(f"{total} collected rows are too few for splits {shares}: {empty} would be empty")
    return bounds


def _write_piece(rows: pa.Table, version_dir: Path, split: str, index: int, options: dict[str, Any]) -> None:
    """One piece of a split: ``<split>/part-<index>.parquet`` (pieces are read back in their indices' order)."""
    folder = version_dir / split
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, folder / f"part-{index:05d}.parquet", **options)


@dataclass(frozen=True)
class _DateRoute:
    """Where one date's rows go: its raw files, its unique keys (pass 1), its first row's place in the time
    order, and the positions of its rows the reference sample takes."""

    index: int
    files: list[Path]
    unique_keys: int
    offset: int
    reference_picks: np.ndarray


def _route_date(
    route: _DateRoute, bounds: dict[str, tuple[int, int]], version_dir: Path, contract: DatasetContract
) -> tuple[dict[str, _SplitStats], pa.Table | None]:
    """Pass 2 for one date (a Dask task with dask.address set): read it deduplicated and in (time, key) order,
    write its rows of each split as that split's piece number `route.index`, fingerprint and count them; return
    the splits' stats of this date and its reference rows."""
    schema = arrow_schema(contract)
    options = parquet_options(contract, schema)
    table = _read_table(route.files, contract, schema, route.unique_keys)
    n = route.unique_keys
    if table.num_rows != n:
        raise PreprocessError(f"raw partition {route.files[0].parent} changed while preprocessing")
    stats: dict[str, _SplitStats] = {}
    for name, (lo, hi) in bounds.items():
        a, b = max(lo, route.offset) - route.offset, min(hi, route.offset + n) - route.offset
        if a < b:
            rows = table.slice(a, b - a)
            _write_piece(rows, version_dir, name, route.index, options)
            stats[name] = _SplitStats()
            stats[name].add(rows, contract)
    picked = table.take(pa.array(route.reference_picks)) if route.reference_picks.size else None
    return stats, picked


def _time_splits(files: list[Path], version_dir: Path, settings: Settings) -> _Splits:
    contract = settings.contract
    by_date = [list(group) for _, group in groupby(files, key=lambda p: p.parent.name)]
    # Pass 1: unique keys per date (key column only), to place every row in time order.
    # Pass 2: each date's rows to the splits they fall in, one piece file per date and split.
    # Both run one task per date on the Dask cluster at dask.address, else two dates at a time here (Parquet,
    # Arrow's hashing and sha256 run outside the GIL).
    with _per_date(settings) as run:
        counts = run(_unique_keys, by_date, "unique keys of {n} date(s) counted", key_column=contract.key_column)
        total = sum(counts)
        bounds = _bounds(total, settings)
        train_rows = bounds["train"][1]
        rng = np.random.default_rng(settings.seed)
        reference_pos = np.sort(
            rng.choice(train_rows, size=min(settings.splits.reference_rows, train_rows), replace=False)
        )
        offsets = list(itertools.accumulate(counts, initial=0))
        routes = [
            _DateRoute(
                index=i,
                files=group,
                unique_keys=n,
                offset=offset,
                reference_picks=reference_pos[(reference_pos >= offset) & (reference_pos < offset + n)] - offset,
            )
            for i, (group, n, offset) in enumerate(zip(by_date, counts, offsets[:-1], strict=True))
        ]
        routed = run(
            _route_date,
            routes,
            "{n} date(s) routed to the splits",
            bounds=bounds,
            version_dir=version_dir,
            contract=contract,
        )
    stats = {name: _SplitStats() for name in (*SPLITS, REFERENCE)}
    reference_parts: list[pa.Table] = []
    for date_stats, picked in routed:  # in date order: the splits' pieces and the reference in time order
        for name, piece in date_stats.items():
            stats[name].merge(piece)
        if picked is not None:
            reference_parts.append(picked)
    return total, stats, pa.concat_tables(reference_parts).combine_chunks()


@contextlib.contextmanager
def _per_date(settings: Settings) -> Iterator[Callable[..., list[Any]]]:
    """``run(fn, dates, what, **kwargs)``: ``fn(date, **kwargs)`` for every date, results in the dates' order
    (``what``, with ``{n}`` for the number of dates, is logged when they ran on the cluster);
    one task per date on the Dask cluster at dask.address (one connection for both passes; data_dir shared with
    the workers, as for collection), else two dates at a time here."""
    address = settings.dask.address
    if address:
        from core.cluster import connect, map_tasks

        with connect(address, settings.dask.connect_timeout_s) as client:

            def on_cluster(fn: Callable[..., Any], dates: list[Any], what: str, **kwargs: Any) -> list[Any]:
                done = map_tasks(client, fn, dates, **kwargs)
                log.info("preprocess: %s on the Dask cluster at %s", what.format(n=len(dates)), address)
                return done

            yield on_cluster
        return
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="preprocess") as pool:

        def here(fn: Callable[..., Any], dates: list[Any], what: str, **kwargs: Any) -> list[Any]:
            return list(pool.map(functools.partial(fn, **kwargs), dates))

        yield here


def _unordered_splits(
    files: list[Path], strategy: str, version_dir: Path, schema: pa.Schema, settings: Settings
) -> _Splits:
    """Random, stratified or group splits: every row is read (they are cut by a seeded order, not by time);
    each split is one piece."""
    contract = settings.contract
    options = parquet_options(contract, schema)
    frame = _read_rows(files, contract)
    total = len(frame)
    _bounds(total, settings)
    shares = {name: getattr(settings.splits, name) for name in SPLITS}
    assigned = assign_splits(frame, strategy, shares, settings)
    stats = {name: _SplitStats() for name in (*SPLITS, REFERENCE)}
    for i, name in enumerate(SPLITS):
        rows = frame[assigned == i]
        if rows.empty:
            raise PreprocessError(f"{total} collected rows left the {name} split empty ({strategy} splits {shares})")
        table = to_arrow(rows, schema)
        _write_piece(table, version_dir, name, 0, options)
        stats[name].add(table, contract)
    train = frame[assigned == 0]
    rng = np.random.default_rng(settings.seed)
    picked = np.sort(rng.choice(len(train), size=min(settings.splits.reference_rows, len(train)), replace=False))
    return total, stats, to_arrow(train.iloc[picked].reset_index(drop=True), schema)


def _point_latest(processed: Path, version: str) -> None:
    write_json_atomic(processed / "latest.json", {"version": version, "updated_at": utc_now()})
