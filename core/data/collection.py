"""Incremental collection, without Prefect: plan a window, pull + validate + stage, then publish or fail.

The three steps are separate functions so the Prefect flow (pipelines/collect.py) can run each as a
task with its own retries; :func:`run_collection` chains them for plain Python callers.

Outcomes, all recorded in ``manifests/collect-<run_id>.json``:

- nothing new: status ``empty``, watermark unchanged;
- bad rows at or under ``collection.max_bad_share``: valid rows published, bad rows quarantined,
  watermark moved to the newest (timestamp, id) pulled;
- bad share above the threshold, or a contract column missing from the source: ``CollectionError``
  naming the columns and counts; quarantine kept, staged rows discarded (the next run pulls them
  again), watermark unchanged.

A contract without a timestamp has no window and no watermark: each run reads the whole source (a full
snapshot); part files are named by their content, so rows already collected write no new file, and
preprocessing drops the copies by key. A contract without an id gets a row key derived from each row's
content (core.data.rules.row_keys).

With ``dask.address`` set, the read, check and staging run on the cluster, one task per chunk of the read
(:func:`_pull_on_dask`): the same chunks as the local read, so the same part files, quarantine, counts and
watermark. A contract without an id, a CSV source, and a SQL source without a timestamp, in another
database than SQLite and PostgreSQL or without an index serving the read's order are collected in this process
(the manifest's ``executor`` says why).

Always checked: loaded + quarantined == pulled.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.cluster import map_tasks
from core.contract import ROW_KEY
from core.data.rules import row_keys, timestamps_of
from core.data.snapshots import (
    PartFile,
    QuarantineWriter,
    publish,
    read_watermark,
    utc_now,
    write_json_atomic,
    write_parquet_atomic,
    write_partitions,
    write_watermark,
)
from core.data.sources import (
    CannotSplitError,
    SourceChangedError,
    SourcePart,
    SqlSource,
    TimeRange,
    Watermark,
    Window,
    open_source,
)
from core.data.validation import SchemaMismatchError, TableValidation, check_columns, validate_table
from core.prefetch import prefetch
from core.settings import Settings

log = logging.getLogger(__name__)


class CollectionError(RuntimeError):
    """A collection run refused its batch (too many bad rows, or the schema is wrong)."""


@dataclass
class CollectionPlan:
    run_id: str
    started_at: str
    source: str
    window: Window | None  # None: a full snapshot (the contract has no timestamp)
    as_of: str
    extra_columns: list[str]
    # Rows without a usable timestamp, when planning counted them at no extra cost (a file source's clock scan);
    # else None, and the pull counts them beside its read.
    unusable_timestamps: int | None = None


@dataclass
class PullCounts:
    """Rows pulled, loaded and quarantined, and what the checker found in them: of a part or of a run."""

    pulled: int = 0
    loaded: int = 0
    quarantined: int = 0
    fault_counts: Counter[str] = field(default_factory=Counter)
    column_counts: Counter[str] = field(default_factory=Counter)
    unknown_categories: dict[str, Counter[str]] = field(default_factory=dict)

    def add_checked(self, pulled: int, checked: TableValidation) -> None:
        """One checked chunk of `pulled` rows; every row must be either valid or quarantined."""
        if checked.rows != pulled:
            raise RuntimeError(f"accounting broke: {pulled} rows pulled, {checked.rows} validated")
        self.add(
            PullCounts(
                pulled,
                checked.valid.num_rows,
                len(checked.quarantined),
                checked.fault_counts,
                checked.column_counts,
                checked.unknown_categories,
            )
        )

    def add(self, other: PullCounts) -> None:
        self.pulled += other.pulled
        self.loaded += other.loaded
        self.quarantined += other.quarantined
        self.fault_counts.update(other.fault_counts)
        self.column_counts.update(other.column_counts)
        for col, counts in other.unknown_categories.items():
            self.unknown_categories.setdefault(col, Counter()).update(counts)


@dataclass
class PullResult(PullCounts):
    """Counts of one run's pull; the staged files wait in ``staging`` until publish."""

    parts: list[PartFile] = field(default_factory=list)
    quarantine_file: str | None = None
    newest: Watermark = field(default_factory=Watermark)
    # Rows outside every window (no usable timestamp): how many the source holds, and those quarantined now
    # (once each); not part of `pulled`.
    unusable_timestamps: int = 0
    unplaceable_ids: list[str] = field(default_factory=list)
    executor: str = "local"  # "dask <address>", or "local" with why not when dask.address is set

    @property
    def bad_share(self) -> float:
        return self.quarantined / self.pulled if self.pulled else 0.0


def new_run_id() -> str:
    return f"{datetime.now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _paths(settings: Settings, run_id: str) -> dict[str, Path]:
    d = settings.data_dir
    return {
        "raw": d / "raw",
        "staging": d / "staging" / run_id,
        "quarantine": d / "quarantine" / f"{run_id}.parquet",
        "manifest": d / "manifests" / f"collect-{run_id}.json",
    }


def plan_window(settings: Settings, as_of: str | None = None, run_id: str | None = None) -> CollectionPlan:
    """Check the source's schema and fix the window: after the watermark, up to as_of - label delay.

    ``as_of`` defaults to the source's clock (its newest timestamp), so replayed or simulated history
    behaves like live data. Rows newer than ``as_of - target.label_delay_days`` wait: their labels are
    not final yet.
    """
    contract = settings.contract
    run_id = run_id or new_run_id()
    started = utc_now()
    source = open_source(settings)
    try:
        missing, extra = check_columns(source.columns(), contract)
        since = read_watermark(settings.data_dir)
        if missing:
            err = SchemaMismatchError(missing, extra)
            message = f"{err} in {source.description}; 0 rows loaded, watermark unchanged"
            _write_manifest(
                settings,
                run_id,
                status="failed",
                error=message,
                source=source.description,
                started_at=started,
                plan=None,
                result=PullResult(),
                since=since,
                extra_columns=extra,
            )
            raise CollectionError(message)
        if extra:
            log.warning("source has columns the contract does not name (ignored): %s", extra)
        if contract.timestamp_column is None:
            return CollectionPlan(run_id, started, source.description, None, started, extra)
        clock = pd.Timestamp(as_of).to_pydatetime() if as_of else source.clock()
        unusable = source.counted_unusable()
    finally:
        source.close()
    if clock is None:  # an empty source: a window that ends before anything
        clock = since.timestamp or datetime(1970, 1, 1)
    until = clock - timedelta(days=contract.target.label_delay_days)
    return CollectionPlan(
        run_id=run_id,
        started_at=started,
        source=source.description,
        window=Window(since=since, until=until),
        as_of=clock.isoformat(),
        extra_columns=extra,
        unusable_timestamps=unusable,
    )


def pull_and_stage(settings: Settings, plan: CollectionPlan) -> PullResult:
    """Read the window, check it, stage the valid rows and quarantine the rest: on the Dask cluster at
    ``dask.address`` when it is set and the read can be cut into parts (:func:`_pull_on_dask`), else here.

    A SQL source read in parts whose rows change while it is read (SourceChangedError) is read again by one
    query, here."""
    address = settings.dask.address
    readers = settings.collection.readers
    if address:
        try:
            return _pull_on_dask(settings, plan, address)
        except (CannotSplitError, SourceChangedError) as exc:
            log.warning("collection runs in this process, not on the Dask cluster at %s: %s", address, exc)
            why, readers = str(exc), 1  # the same question would get the same answer here
    else:
        try:
            return _pull_chunks(settings, plan, readers)
        except SourceChangedError as exc:
            log.warning("%s; the window is read again by one query", exc)
            why, readers = "", 1
    result = _pull_chunks(settings, plan, readers)
    if address:
        result.executor = f"local: {why}"
    return result


def _pull_chunks(settings: Settings, plan: CollectionPlan, readers: int) -> PullResult:
    """Three stages overlap, each in its own thread(s), joined by bounded queues (a few chunks in memory at
    any time, whatever the source's size): the source's reader(s) (ADBC / pyarrow, outside the GIL), the
    checker (this thread), and the writer (fingerprints and Parquet, outside the GIL). The writer takes
    chunks in the order they were read, so the same source gives the same part files in every run.
    """
    contract = settings.contract
    paths = _paths(settings, plan.run_id)
    # A retried attempt starts clean: staged files of a failed attempt are not half-counted.
    shutil.rmtree(paths["staging"], ignore_errors=True)
    result = PullResult()
    quarantine = QuarantineWriter(paths["quarantine"], contract.column_names, plan.run_id, plan.started_at)
    source = open_source(settings, readers)
    seen_keys: dict[int, int] = {}  # row-key occurrence counts across this run's chunks
    writer = _StagingWriter(paths["staging"], contract, quarantine)
    side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collect-unusable")
    try:
        unusable = side.submit(_count_unusable, settings, source, plan)  # beside the read
        chunks = source.read_arrow(plan.window, settings.collection.chunk_rows)
        for chunk in prefetch(chunks, depth=2, name="collect-reader"):
            checked = validate_table(chunk, contract)
            valid = checked.valid
            if contract.id_column is None and valid.num_rows:
                valid = valid.append_column(ROW_KEY, row_keys(valid, contract.column_names, seen_keys))
            result.add_checked(chunk.num_rows, checked)
            writer.submit(valid, checked.quarantined)
            if contract.timestamp_column is not None:
                result.newest = _newest(result.newest, chunk, checked.timestamps, contract)
            del chunk, checked, valid
        result.parts = writer.drain()
        result.unusable_timestamps = unusable.result()
        result.unplaceable_ids = _quarantine_unplaceable(settings, source, quarantine, result.unusable_timestamps)
    finally:
        side.shutdown(wait=True, cancel_futures=True)
        writer.close()
        quarantine.close()
        source.close()
    if quarantine.rows:
        result.quarantine_file = str(paths["quarantine"].relative_to(settings.data_dir))
    if result.loaded + result.quarantined != result.pulled:
        raise RuntimeError(
            f"accounting broke: {result.loaded} loaded + {result.quarantined} quarantined != {result.pulled} pulled"
        )
    return result


def _cluster_parts(settings: Settings, plan: CollectionPlan, client: Any) -> list[SourcePart]:
    """The window's read cut into parts a worker reads on its own: a Parquet source's from its files' footers, a
    SQL source's placed by its days' row counts (one task a day on the cluster). CannotSplitError says why the
    read cannot be cut."""
    if settings.contract.id_column is None:
        raise CannotSplitError(
            "the contract has no id_column: a row's key is derived from its content and numbered among identical "
            "rows across the whole read, which one part alone cannot know"
        )

    def count_on_cluster(ranges: list[TimeRange]) -> list[int]:
        return map_tasks(client, _count_range, ranges, settings=settings, window=plan.window)

    source = open_source(settings)
    try:
        if isinstance(source, SqlSource):
            return source.parts(plan.window, settings.collection.chunk_rows, counter=count_on_cluster)
        return source.parts(plan.window, settings.collection.chunk_rows)
    finally:
        source.close()


def _count_range(time_range: TimeRange, settings: Settings, window: Window | None) -> int:
    """One Dask task: the rows of a SQL source's window read in one time range."""
    source = open_source(settings)
    try:
        assert isinstance(source, SqlSource)
        return source.count(window, time_range)
    finally:
        source.close()


@dataclass
class _PartOutcome(PullCounts):
    """What one part's task did: its counts, part files, newest (timestamp, id) and quarantine piece."""

    index: int = 0
    read: int = 0
    parts: list[PartFile] = field(default_factory=list)
    newest: Watermark = field(default_factory=Watermark)
    quarantine_piece: str | None = None


def _quarantine_piece(staging: Path, index: int) -> Path:
    return staging / ".quarantine" / f"{index:08d}.parquet"


def _collect_part(settings: Settings, plan: CollectionPlan, part: SourcePart) -> _PartOutcome:
    """One Dask task: read one part of the window from the source, check it, write its part files into the
    run's staging and its quarantined rows (with reasons) beside them; return the counts."""
    contract = settings.contract
    staging = _paths(settings, plan.run_id)["staging"]
    source = open_source(settings)
    try:
        read = source.read_part(plan.window, part)
    finally:
        source.close()
    outcome = _PartOutcome(index=part.index, read=read.read)
    bad: list[pd.DataFrame] = []
    for chunk in read.tables:
        checked = validate_table(chunk, contract)
        outcome.add_checked(chunk.num_rows, checked)
        outcome.parts.extend(write_partitions(checked.valid, staging, contract))
        if len(checked.quarantined):
            bad.append(checked.quarantined)
        if contract.timestamp_column is not None:
            outcome.newest = _newest(outcome.newest, chunk, checked.timestamps, contract)
    if bad:
        piece = _quarantine_piece(staging, part.index)
        columns = [*contract.column_names, "_reason"]
        schema = pa.schema([(c, pa.string()) for c in columns])
        rows = pa.concat_tables(pa.Table.from_pandas(b[columns], schema=schema, preserve_index=False) for b in bad)
        write_parquet_atomic(rows, piece)
        outcome.quarantine_piece = str(piece)
    return outcome


def _pull_on_dask(settings: Settings, plan: CollectionPlan, address: str) -> PullResult:
    """The window's read cut into parts (:func:`_cluster_parts`), one task a part on the cluster; this process
    adds up the counts, the fault counts and the newest (timestamp, id) in the read's order, and writes the
    quarantine file from the parts' pieces in that order.

    Workers read the source and write at this process's paths: on several machines, data_dir must be one
    shared filesystem and the source reachable from every worker (docs/scaling.md). CannotSplitError when the
    read cannot be cut; SourceChangedError when a part read other rows than planned (the source changed between
    planning and reading), with nothing staged left behind.
    """
    from core.cluster import connect

    with connect(address, settings.dask.connect_timeout_s) as client:
        parts = _cluster_parts(settings, plan, client)
        return _collect_parts(settings, plan, parts, client, address)


def _collect_parts(
    settings: Settings, plan: CollectionPlan, parts: list[SourcePart], client: Any, address: str
) -> PullResult:
    """:func:`_pull_on_dask` once the parts are planned."""
    contract = settings.contract
    paths = _paths(settings, plan.run_id)
    shutil.rmtree(paths["staging"], ignore_errors=True)
    tag = uuid.uuid4().hex[:6]
    futures = [
        client.submit(_collect_part, settings, plan, p, key=f"collect-{plan.run_id}-{p.index}-{tag}") for p in parts
    ]
    source = open_source(settings)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="collect-unusable") as side:
            unusable = side.submit(_count_unusable, settings, source, plan)  # here, while the cluster reads
            outcomes: list[_PartOutcome] = client.gather(futures)
            unusable_timestamps = unusable.result()
    except SourceChangedError:
        from distributed import wait

        wait(futures)  # the other parts' tasks stop writing into staging before it goes
        shutil.rmtree(paths["staging"], ignore_errors=True)
        raise
    finally:
        client.cancel(futures)
        source.close()
    result = PullResult(executor=f"dask {address}")
    quarantine = QuarantineWriter(paths["quarantine"], contract.column_names, plan.run_id, plan.started_at)
    try:
        for outcome in sorted(outcomes, key=lambda o: o.index):
            result.add(outcome)
            result.parts.extend(outcome.parts)
            result.newest = _later(result.newest, outcome.newest)
            if outcome.quarantine_piece is not None:
                quarantine.write(pq.read_table(outcome.quarantine_piece).to_pandas())
        result.unusable_timestamps = unusable_timestamps
        source = open_source(settings)
        try:
            result.unplaceable_ids = _quarantine_unplaceable(settings, source, quarantine, unusable_timestamps)
        finally:
            source.close()
    finally:
        quarantine.close()
    shutil.rmtree(paths["staging"] / ".quarantine", ignore_errors=True)
    if quarantine.rows:
        result.quarantine_file = str(paths["quarantine"].relative_to(settings.data_dir))
    if result.loaded + result.quarantined != result.pulled:
        raise RuntimeError(
            f"accounting broke: {result.loaded} loaded + {result.quarantined} quarantined != {result.pulled} pulled"
        )
    return result


class _StagingWriter:
    """Writes checked chunks (part files by date, quarantined rows) in one thread, in submission order,
    with at most two chunks waiting."""

    def __init__(self, staging: Path, contract: Any, quarantine: QuarantineWriter) -> None:
        self.staging = staging
        self.contract = contract
        self.quarantine = quarantine
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collect-writer")
        self.pending: deque[Future[list[PartFile]]] = deque()
        self.parts: list[PartFile] = []

    def _write(self, valid: pa.Table, quarantined: pd.DataFrame) -> list[PartFile]:
        parts = write_partitions(valid, self.staging, self.contract)
        self.quarantine.write(quarantined)
        return parts

    def submit(self, valid: pa.Table, quarantined: pd.DataFrame) -> None:
        while len(self.pending) >= 2:
            self.parts.extend(self.pending.popleft().result())
        self.pending.append(self.pool.submit(self._write, valid, quarantined))

    def drain(self) -> list[PartFile]:
        while self.pending:
            self.parts.extend(self.pending.popleft().result())
        return self.parts

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)


def _unplaceable_path(settings: Settings) -> Path:
    return settings.data_dir / "state" / "unplaceable_ids.json"


def _count_unusable(settings: Settings, source: Any, plan: CollectionPlan) -> int:
    """How many source rows have no usable timestamp (NULL, or text that is not a time): no window holds them.
    Counted by a scan of the source unless planning already counted them."""
    column = settings.contract.timestamp_column
    if column is None:
        return 0
    known = plan.unusable_timestamps
    unusable = int(source.unusable_timestamps()) if known is None else known
    if unusable:
        log.warning(
            "%d source rows have no usable %s and cannot be placed in any window (not collected)", unusable, column
        )
    return unusable


def _quarantine_unplaceable(settings: Settings, source: Any, quarantine: QuarantineWriter, expected: int) -> list[str]:
    """Quarantine source rows whose timestamp is NULL or not a time, once each (ids kept in state).

    No window can hold them, so without this they would sit in the source unseen by every run.
    ``expected`` is the pull's count of such rows: none (the usual case) spares a scan of the source.
    """
    contract = settings.contract
    if contract.timestamp_column is None or expected == 0:
        return []
    rows = source.unusable_rows()
    if rows.empty:
        return []
    seen = _unplaceable_seen(settings)
    ids = _row_ids(rows, contract)
    new = rows[~ids.isin(seen).to_numpy()]
    if new.empty:
        return []
    frame = new.reindex(columns=contract.column_names).astype(object).where(new.notna(), None).astype(str)
    frame["_reason"] = f"{contract.timestamp_column}: null or not a timestamp; no collection window can hold it"
    quarantine.write(frame)
    return _row_ids(new, contract).tolist()


def _row_ids(rows: pd.DataFrame, contract: Any) -> pd.Series:
    """How an unplaceable row is remembered: its id, or (no id column) a hash of its raw values as text."""
    if contract.id_column is not None:
        return rows[contract.id_column].astype(str)
    text = rows.reindex(columns=contract.column_names).astype(str)
    return pd.Series([f"{h:016x}" for h in pd.util.hash_pandas_object(text, index=False).tolist()], index=rows.index)


def _unplaceable_seen(settings: Settings) -> set[str]:
    path = _unplaceable_path(settings)
    return set(json.loads(path.read_text())["ids"]) if path.exists() else set()


def _remember_unplaceable(settings: Settings, ids: list[str]) -> None:
    if ids:
        write_json_atomic(_unplaceable_path(settings), {"ids": sorted(_unplaceable_seen(settings) | set(ids))})


def _newest(current: Watermark, chunk: pa.Table, stamps: np.ndarray | None, contract: Any) -> Watermark:
    """The newest (timestamp, id) of the pulled rows so far; ``stamps`` are the chunk's times as checked."""
    ts = stamps if stamps is not None else timestamps_of(chunk.column(contract.timestamp_column))
    usable = ~np.isnat(ts)
    if not usable.any():
        return current
    top = ts[usable].max()
    newest_id = None
    if contract.id_column is not None:
        tied = chunk.column(contract.id_column).take(pa.array(np.flatnonzero(ts == top)))
        newest_id = str(tied.to_pandas().astype(str).max())
    return _later(current, Watermark(timestamp=pd.Timestamp(top).to_pydatetime(), id=newest_id))


def _later(current: Watermark, candidate: Watermark) -> Watermark:
    """The newer of two (timestamp, id) marks (ids in Python's string order); ``current`` on a tie."""
    if candidate.timestamp is None:
        return current
    if current.timestamp is None or (candidate.timestamp, candidate.id or "") > (current.timestamp, current.id or ""):
        return candidate
    return current


def finish(
    settings: Settings, plan: CollectionPlan, result: PullResult, max_bad_share: float | None = None
) -> dict[str, Any]:
    """Publish and move the watermark, or refuse the batch; either way write the run's manifest."""
    limit = settings.collection.max_bad_share if max_bad_share is None else max_bad_share
    paths = _paths(settings, plan.run_id)
    common: dict[str, Any] = {
        "source": plan.source,
        "started_at": plan.started_at,
        "plan": plan,
        "result": result,
        "since": plan.window.since if plan.window is not None else Watermark(),
        "extra_columns": plan.extra_columns,
    }
    if result.pulled == 0:
        shutil.rmtree(paths["staging"], ignore_errors=True)
        _remember_unplaceable(settings, result.unplaceable_ids)
        window = "the source" if plan.window is None else f"({plan.window.since.timestamp}, {plan.window.until}]"
        print(f"collect {plan.run_id}: no new rows in {window}; watermark unchanged")
        return _write_manifest(settings, plan.run_id, status="empty", **common)
    if result.bad_share > limit:
        shutil.rmtree(paths["staging"], ignore_errors=True)
        faults = ", ".join(f"{k}: {v}" for k, v in result.fault_counts.most_common())
        message = (
            f"{result.quarantined} of {result.pulled} rows ({result.bad_share:.1%}) failed validation, "
            f"above max_bad_share {limit:.1%}: {faults}. Quarantine: {result.quarantine_file}; "
            "nothing loaded, watermark unchanged"
        )
        _write_manifest(settings, plan.run_id, status="failed", error=message, max_bad_share=limit, **common)
        raise CollectionError(message)
    files = publish(paths["staging"], paths["raw"], result.parts)
    _remember_unplaceable(settings, result.unplaceable_ids)
    manifest = _write_manifest(settings, plan.run_id, status="succeeded", files=files, max_bad_share=limit, **common)
    if plan.window is not None:
        write_watermark(settings.data_dir, result.newest, window_end=plan.window.until.isoformat(), run_id=plan.run_id)
    print(
        f"collect {plan.run_id}: pulled {result.pulled}, loaded {result.loaded}, quarantined {result.quarantined} "
        f"({result.bad_share:.2%}); {sum(f['new'] for f in files)} new file(s) under {paths['raw']}"
    )
    return manifest


def _write_manifest(
    settings: Settings,
    run_id: str,
    *,
    status: str,
    source: str,
    started_at: str,
    plan: CollectionPlan | None,
    result: PullResult,
    since: Watermark,
    extra_columns: list[str],
    files: list[dict[str, Any]] | None = None,
    error: str | None = None,
    max_bad_share: float | None = None,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "status": status,
        "error": error,
        "source": source,
        "started_at": started_at,
        "finished_at": utc_now(),
        "window": None
        if plan is None or plan.window is None
        else {
            "after": since.to_dict(),
            "until": plan.window.until.isoformat(),
            "as_of": plan.as_of,
            "label_delay_days": settings.contract.target.label_delay_days,
        },
        "rows": {"pulled": result.pulled, "loaded": result.loaded, "quarantined": result.quarantined},
        # Flat copies for callers that print a one-line summary (demo).
        "rows_pulled": result.pulled,
        "rows_loaded": result.loaded,
        "rows_quarantined": result.quarantined,
        "bad_share": result.bad_share,
        "max_bad_share": max_bad_share,
        "fault_counts": dict(result.fault_counts.most_common()),
        "column_counts": dict(result.column_counts.most_common()),
        "unknown_categories": {c: dict(v) for c, v in result.unknown_categories.items()},
        "extra_columns": extra_columns,
        "unusable_timestamps": result.unusable_timestamps if plan else None,
        "unplaceable_quarantined": len(result.unplaceable_ids),
        "files": files or [],
        "quarantine_file": result.quarantine_file,
        "executor": result.executor,
        "watermark_before": since.to_dict(),
        "watermark_after": result.newest.to_dict() if status == "succeeded" else since.to_dict(),
    }
    write_json_atomic(_paths(settings, run_id)["manifest"], manifest)
    return manifest


def run_collection(settings: Settings, as_of: str | None = None, max_bad_share: float | None = None) -> dict[str, Any]:
    """The whole collection run as one plain Python call; returns the manifest."""
    plan = plan_window(settings, as_of)
    result = pull_and_stage(settings, plan)
    return finish(settings, plan, result, max_bad_share)
