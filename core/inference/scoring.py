"""Batch scoring: the raw snapshot's partitions scored with a registered version, partition by partition.

The unit of work is one raw part file (core.data.snapshots: one event date, named by the fingerprint of
its rows, never changed once published). Each partition is read in batches, checked by the contract's
checker (core.data.rules), predicted by the API's predictor (core.inference.predictor, built from the
registered version as serving builds it) and written under ``scoring.output_dir``::

    predictions/date=YYYY-MM-DD/part-<fp>.parquet   key, timestamp, prediction, p_<class>, model, scored_at
    refused/date=YYYY-MM-DD/part-<fp>.parquet       rows the checker refused (values as text) + _reason
    done/<date>--<fp>.json                          the partition's accounting: the scoring watermark
    manifests/score-<run_id>.json                   what each run did

Every partition's files are written to a temporary name and renamed, and its done marker is written
last: a run killed anywhere leaves at most hidden temporary files, and the next run redoes exactly the
partitions without a marker (the same file names, so nothing is duplicated). The warehouse table (one
DELETE + INSERT of the partition in a transaction) and the prediction log (request ids derived from the
partition and row, ON CONFLICT DO NOTHING) are idempotent the same way. Every row read is accounted for:
scored + refused == read, per partition and per run, or the run fails.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from core.contract import DatasetContract, identifier, label_text
from core.data.rules import ContractChecker
from core.data.snapshots import UNORDERED_PARTITION, raw_part_files, utc_now, write_json_atomic
from core.databases import create_tables, engine_for
from core.inference.predictor import Prediction, Predictor, columns_from_typed, predictor_for
from core.modeling.compiled import Columns
from core.modeling.explain import top_reasons
from core.predictions import BATCH, DEFAULT_ROLE, LogSchema, ensure_tables
from core.prefetch import prefetch
from core.registry.artefact import RegisteredModel, load_registered
from core.settings import Settings

log = logging.getLogger(__name__)

PARTITION_COLUMN = "partition"  # in the warehouse table: which raw partition a row came from
# zstd at its fastest level: predictions are mostly probabilities, which compress little at any level,
# and the write must not cost more than the prediction.
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 1}
# One reason code: a contract column, the row's value of it (as text: the column changes from row to row)
# and its signed contribution to the explained output.
REASON = pa.struct([("column", pa.string()), ("value", pa.string()), ("contribution", pa.float64())])


class ScoringError(RuntimeError):
    """A scoring run that cannot go on: a wrong window, no such model, broken accounting."""


@dataclass(frozen=True)
class Partition:
    """One raw part file: its date (or ``all``) and the fingerprint prefix in its name."""

    path: Path
    date: str
    part: str  # the file's stem, "part-<fingerprint>"

    @property
    def key(self) -> str:
        return f"{self.date}--{self.part}"

    @property
    def folder(self) -> str:
        return UNORDERED_PARTITION if self.date == UNORDERED_PARTITION else f"date={self.date}"


@dataclass
class PartitionResult:
    partition: str
    date: str
    read: int = 0
    scored: int = 0
    refused: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # column -> refused rows naming it
    seconds: float = 0.0
    skipped: bool = False
    committed: Future[None] | None = field(default=None, repr=False, compare=False)  # its files renamed in

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "date": self.date,
            "read": self.read,
            "scored": self.scored,
            "refused": self.refused,
            "reasons": self.reasons,
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class ScoringModel:
    """The registered version that scores, with its predictor."""

    name: str
    version: str
    run_id: str | None
    predictor: Predictor


def output_dir(settings: Settings) -> Path:
    return settings.scoring.output_dir or settings.data_dir / "scores"


def load_model(settings: Settings, *, version: str | None = None, alias: str | None = None) -> ScoringModel:
    """`version`, else the alias' version (default scoring.model_alias), from the registry, as a predictor
    built the way the API builds its own (core.inference.predictor.predictor_for)."""
    try:
        registered = load_registered(
            settings.model_name,
            tracking_uri=settings.mlflow_tracking_uri,
            version=version,
            alias=None if version else (alias or settings.scoring.model_alias),
        )
    except Exception as exc:
        which = f"version {version}" if version else f"alias @{alias or settings.scoring.model_alias}"
        raise ScoringError(f"cannot load {settings.model_name} {which} from the registry: {exc}") from exc
    return model_from(registered, settings)


def model_from(registered: RegisteredModel, settings: Settings) -> ScoringModel:
    predictor = predictor_for(
        registered.pipeline,
        registered.metadata,
        settings.contract,
        tags=registered.tags,
        use_onnx=settings.scoring.use_onnx,
        threads=settings.serving.threads_per_worker,
        parity_rows=settings.serving.parity_rows,
        tolerance=settings.serving.parity_tolerance,
    )
    return ScoringModel(registered.name, registered.version, registered.run_id, predictor)


# ---- which partitions -----------------------------------------------------------------------------------
def partitions(raw: Path) -> list[Partition]:
    """Every published raw part file, oldest date first."""
    out = []
    for path in raw_part_files(raw):
        folder = path.parent.name
        date = folder.removeprefix("date=") if folder.startswith("date=") else UNORDERED_PARTITION
        out.append(Partition(path=path, date=date, part=path.stem))
    return out


def select(
    found: list[Partition], *, dates: list[str] | None = None, start: str | None = None, end: str | None = None
) -> list[Partition]:
    """The partitions of `dates`, or those whose date lies in [start, end] (ISO dates, both optional)."""
    chosen = found
    if dates is not None:
        wanted = {str(d) for d in dates}
        unknown = sorted(wanted - {p.date for p in found})
        if unknown:
            raise ScoringError(f"no raw partition for {unknown}; the snapshot has {sorted({p.date for p in found})}")
        chosen = [p for p in chosen if p.date in wanted]
    for bound, keep in ((start, lambda d, b: d >= b), (end, lambda d, b: d <= b)):
        if bound is None:
            continue
        try:
            day = datetime.fromisoformat(str(bound)).date().isoformat()
        except ValueError:
            raise ScoringError(f"{bound!r} is not an ISO date (YYYY-MM-DD)") from None
        chosen = [p for p in chosen if p.date != UNORDERED_PARTITION and keep(p.date, day)]
    return chosen


def done_marker(out: Path, partition: Partition) -> Path:
    return out / "done" / f"{partition.key}.json"


# ---- output columns -----------------------------------------------------------------------------------
class OutputSchema:
    """The columns of a scored partition for one contract: key, timestamp (if the contract has one),
    prediction, one p_<class> per class for a classifier, model name, version, run id, scored_at; with
    `explain` k > 0 the API's reason codes too: explain_method, explained_class, base_value, raw_output,
    reason_1..k (struct: column, value as text, signed contribution) and other (the rest's sum), so
    base_value + the reasons' contributions + other == raw_output."""

    def __init__(self, contract: DatasetContract, classes: list[Any], explain: int = 0) -> None:
        self.contract = contract
        self.key = contract.key_column
        self.timestamp = contract.timestamp_column
        self.proba = {label_text(c): f"p_{identifier(label_text(c))}" for c in classes}
        label: pa.DataType
        if not contract.is_classification:
            label = pa.float64()
        elif all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
            label = pa.int64()
        else:
            label = pa.string()
        fields = [pa.field(self.key, pa.string())]
        if self.timestamp:
            fields.append(pa.field(self.timestamp, pa.timestamp("us", tz="UTC")))
        fields += [pa.field("prediction", label)]
        fields += [pa.field(c, pa.float64()) for c in self.proba.values()]
        fields += [
            pa.field("model_name", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("run_id", pa.string()),
            pa.field("scored_at", pa.timestamp("us", tz="UTC")),
        ]
        self.explain = explain
        if explain:
            fields += [
                pa.field("explain_method", pa.string()),
                pa.field("explained_class", pa.string()),
                pa.field("base_value", pa.float64()),
                pa.field("raw_output", pa.float64()),
                *(pa.field(f"reason_{i}", REASON) for i in range(1, explain + 1)),
                pa.field("other", pa.float64()),
            ]
        self.schema = pa.schema(fields)
        self.label_type = label

    def _labels(self, result: Prediction) -> pa.Array:
        if result.picks is None:
            labels = result.labels
            if pa.types.is_string(self.label_type):
                labels = [label_text(v) for v in labels]
            return pa.array(labels, type=self.label_type)
        # A classifier's label per row is one of its classes: the classes converted once, taken by row.
        classes = list(result.classes)
        texts = [label_text(c) for c in classes] if pa.types.is_string(self.label_type) else classes
        return pa.array(texts, type=self.label_type).take(pa.array(result.picks))

    def table(
        self,
        rows: pa.Table,
        result: Prediction,
        model: ScoringModel,
        scored_at: datetime,
        reasons: list[dict[str, Any]] | None = None,
    ) -> pa.Table:
        n = rows.num_rows
        arrays: list[pa.Array] = [pc.cast(rows.column(self.key), pa.string())]
        if self.timestamp:
            ts = rows.column(self.timestamp)
            if pa.types.is_timestamp(ts.type) and ts.type.tz is None:
                ts = pc.assume_timezone(ts, "UTC")
            arrays.append(pc.cast(ts, pa.timestamp("us", tz="UTC")))
        arrays.append(self._labels(result))
        if self.proba:
            assert result.probabilities is not None
            position = {label_text(c): i for i, c in enumerate(result.classes)}
            for label in self.proba:
                arrays.append(pa.array(result.probabilities[:, position[label]], type=pa.float64()))
        for value in (model.name, model.version, model.run_id):
            arrays.append(pa.repeat(pa.scalar(value, pa.string()), n))
        arrays.append(pa.repeat(pa.scalar(scored_at, pa.timestamp("us", tz="UTC")), n))
        if self.explain:
            arrays += self._reason_arrays(reasons, n)
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _reason_arrays(self, answers: list[dict[str, Any]] | None, n: int) -> list[pa.Array]:
        """core.modeling.explain.top_reasons' answers as columns; all null without an exact method."""
        if answers is None or not answers or answers[0].get("method") == "unavailable":
            return [pa.nulls(n, f.type) for f in list(self.schema)[-(self.explain + 5) :]]
        out = [
            pa.array([a["method"] for a in answers], pa.string()),
            pa.array([a["explained_class"] for a in answers], pa.string()),
            pa.array([a["base_value"] for a in answers], pa.float64()),
            pa.array([a["raw_output"] for a in answers], pa.float64()),
        ]
        for i in range(self.explain):
            out.append(
                pa.array(
                    [
                        None
                        if i >= len(a["reasons"])
                        else {
                            "column": a["reasons"][i]["column"],
                            "value": None if a["reasons"][i]["value"] is None else str(a["reasons"][i]["value"]),
                            "contribution": a["reasons"][i]["contribution"],
                        }
                        for a in answers
                    ],
                    REASON,
                )
            )
        out.append(pa.array([a["other"] for a in answers], pa.float64()))
        return out


def refused_table(rows: pa.Table, reasons: list[str]) -> pa.Table:
    """Refused rows with every value as text (as collection's quarantine keeps them) and the reason."""
    arrays = [pc.cast(rows.column(name), pa.string()) for name in rows.column_names]
    names = list(rows.column_names)
    return pa.Table.from_arrays([*arrays, pa.array(reasons, pa.string())], names=[*names, "_reason"])


# ---- one partition --------------------------------------------------------------------------------------
class _PartWriter:
    """A Parquet file written under a hidden temporary name and renamed into place by `commit`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # What a killed run left of this file: hidden, never read, removed before writing it again.
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._writer: pq.ParquetWriter | None = None
        self.failed: BaseException | None = None

    def write(self, table: pa.Table) -> None:
        try:
            if self._writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = pq.ParquetWriter(self.tmp, table.schema, **PARQUET_OPTIONS)
            self._writer.write_table(table)
        except BaseException as exc:
            self.failed = exc
            raise

    def commit(self) -> bool:
        if self.failed is not None:  # a batch never reached the file: nothing of it is published
            self.abort()
            raise ScoringError(f"writing {self.path} failed: {self.failed}") from self.failed
        if self._writer is None:
            self.path.unlink(missing_ok=True)  # a rescored partition with nothing here any more
            return False
        self._writer.close()
        self.tmp.replace(self.path)
        return True

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)


Sink = Callable[[Partition, pa.Table, pa.Table], None]  # (partition, scored rows' output, scored input rows)


def score_partition(
    partition: Partition,
    model: ScoringModel,
    contract: DatasetContract,
    out: Path,
    *,
    batch_rows: int,
    sinks: list[Sink] | None = None,
    writer: ThreadPoolExecutor | None = None,
    explain: int = 0,
) -> PartitionResult:
    """Score one raw partition into its predictions and refused files; return its accounting.

    Files are written by `writer` (one thread, in submission order; without one, a thread of this call's
    own), so a run's writes overlap its next partition's reading and predicting. The files are renamed
    into place by a last task on `writer`, whose future is `result.committed`.
    """
    started = time.perf_counter()
    result = PartitionResult(partition=partition.key, date=partition.date)
    schema = OutputSchema(contract, model.predictor.classes if model.predictor.is_classifier else [], explain)
    explaining = explain > 0 and model.predictor.explainer.available
    checker = ContractChecker(contract, contract.input_columns)
    scored_at = datetime.now(UTC)
    predictions = _PartWriter(out / "predictions" / partition.folder / f"{partition.part}.parquet")
    refused = _PartWriter(out / "refused" / partition.folder / f"{partition.part}.parquet")
    reasons: Counter[str] = Counter()
    # The model reads its feature columns only (an id column, however long its strings, is not converted).
    needed = {*contract.feature_columns, *contract.time_feature_columns}
    # Three stages overlap: the next batch is read, checked and turned into column arrays (a thread), this
    # one predicted (here), the previous one written (a thread). Arrow's reader and kernels, the writer
    # and ONNX Runtime release the GIL, so on two cores the stages run side by side.
    pool = writer or ThreadPoolExecutor(1, thread_name_prefix="score-write")
    writes: list[Future[None]] = []
    try:
        prepared = _prepared(partition.path, batch_rows, checker, contract, needed)
        for item in prefetch(prepared, depth=1, name="score-read"):
            result.read += item.batch.num_rows
            if item.refused is not None:
                writes.append(pool.submit(refused.write, item.refused))
                result.refused += item.refused.num_rows
                for text in item.reasons:
                    reasons.update({part.split(":", 1)[0].strip() for part in text.split("; ")})
            if item.rows is None or item.columns is None:
                continue
            prediction = model.predictor.predict(item.columns)
            # The API's path (serving/routes/predictions.py): Predictor.explain, then top_reasons.
            answers = (
                top_reasons(model.predictor.explain(item.columns, prediction), item.columns, explain)
                if explaining
                else None
            )
            table = schema.table(item.rows, prediction, model, scored_at, answers)
            writes.append(pool.submit(predictions.write, table))
            for sink in sinks or []:
                sink(partition, table, item.rows)
            result.scored += item.rows.num_rows
            # Surface a failed write early, and hold at most two batches waiting for the writer (memory).
            while writes and (writes[0].done() or len(writes) > 2):
                writes.pop(0).result()
        result.committed = pool.submit(_commit, predictions, refused)  # after every write: one thread, FIFO
    except BaseException:
        pool.submit(_abort, predictions, refused)
        if writer is None:
            pool.shutdown(wait=True)
        raise
    if writer is None:
        pool.shutdown(wait=True)
        result.committed.result()
    result.reasons = dict(sorted(reasons.items()))
    result.seconds = time.perf_counter() - started
    if result.scored + result.refused != result.read:
        raise ScoringError(
            f"accounting broke in {partition.key}: {result.scored} scored + {result.refused} refused "
            f"!= {result.read} read"
        )
    return result


def _commit(*writers: _PartWriter) -> None:
    for w in writers:
        w.commit()


def _abort(*writers: _PartWriter) -> None:
    for w in writers:
        w.abort()


@dataclass
class _Prepared:
    """One batch read and checked: the rows to predict and their column arrays, the refused rows."""

    batch: pa.Table
    rows: pa.Table | None
    columns: Columns | None
    refused: pa.Table | None
    reasons: list[str]


def _prepared(
    path: Path, batch_rows: int, checker: ContractChecker, contract: DatasetContract, needed: set[str]
) -> Iterator[_Prepared]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        table = pa.Table.from_batches([batch])
        checked = checker.check(table)
        bad = checked.bad
        if checked.missing_columns:
            bad = np.ones(table.num_rows, dtype=bool)
            texts = [f"missing column(s) {checked.missing_columns}"] * table.num_rows
        else:
            by_row = checked.reasons()
            texts = [str(by_row.get(i, "")) for i in np.flatnonzero(bad)]
        refused = refused_table(table.filter(pa.array(bad)), texts) if bad.any() else None
        if bad.all():
            yield _Prepared(table, None, None, refused, texts)
            continue
        mask = pa.array(~bad) if bad.any() else None
        rows = table if mask is None else table.filter(mask)
        typed = {k: v if mask is None else v.filter(mask) for k, v in checked.typed.items() if k in needed}
        yield _Prepared(table, rows, columns_from_typed(typed, contract), refused, texts)


# ---- sinks: the warehouse table and the prediction log -------------------------------------------------
class WarehouseSink:
    """Scored rows into `table` of the warehouse: a partition's old rows deleted, then its rows inserted,
    both in one transaction per partition (a partition re-scored replaces itself, never doubles)."""

    def __init__(self, url: str, table: str) -> None:
        self.engine = engine_for(url)
        self.table_name = table
        self._pending: dict[str, list[pa.Table]] = {}
        self._table_made = False  # by this sink (race-safe: another writer may have made it first)

    def __call__(self, partition: Partition, scored: pa.Table, rows: pa.Table) -> None:
        self._pending.setdefault(partition.key, []).append(scored)

    def commit(self, partition: Partition) -> None:
        frame = self._frame(partition)
        if frame is not None and not self._table_made:  # pandas makes the table from the frame's columns
            empty = frame.head(0)
            create_tables(
                self.engine,
                lambda conn: empty.to_sql(self.table_name, conn, if_exists="append", index=False),
                {self.table_name},
            )
            self._table_made = True
        with self.engine.begin() as conn:  # the partition's old rows deleted, its new ones in: one transaction
            if self._table_made or sa.inspect(conn).has_table(self.table_name):
                quote = conn.dialect.identifier_preparer.quote
                conn.execute(
                    sa.text(f"DELETE FROM {quote(self.table_name)} WHERE {quote(PARTITION_COLUMN)} = :p"),
                    {"p": partition.key},
                )
            if frame is not None:
                frame.to_sql(self.table_name, conn, if_exists="append", index=False, chunksize=10_000)

    def _frame(self, partition: Partition) -> pd.DataFrame | None:
        """The partition's scored rows as SQL takes them, or None when it has none."""
        parts = self._pending.pop(partition.key, [])
        frame = pa.concat_tables(parts).to_pandas() if parts else None
        if frame is None or not len(frame):
            return None
        frame.insert(0, PARTITION_COLUMN, partition.key)
        for column in frame.columns:  # SQLite keeps no time zone: UTC, naive
            if hasattr(frame[column], "dt") and getattr(frame[column].dt, "tz", None) is not None:
                frame[column] = frame[column].dt.tz_convert("UTC").dt.tz_localize(None)
            elif column.startswith("reason_"):  # a reason code (a struct) as JSON text in SQL
                frame[column] = frame[column].map(lambda v: None if v is None else json.dumps(v))
        return frame

    def discard(self, partition: Partition) -> None:
        self._pending.pop(partition.key, None)

    def close(self) -> None:
        self.engine.dispose()


class PredictionLogSink:
    """Scored rows into the prediction log with source=batch, as the API logs its own: request ids
    ``batch-<partition fingerprint>-<key>``, so a re-scored partition's rows are skipped, not doubled."""

    def __init__(self, url: str, contract: DatasetContract) -> None:
        self.engine = engine_for(url)
        self.contract = contract
        self.schema = LogSchema(contract)
        self.metadata = sa.MetaData()
        self.predictions, _ = self.schema.tables(self.metadata)
        ensure_tables(self.engine, self.metadata)
        self.columns = [c.name for c in self.predictions.columns]
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            self.insert: Any = pg_insert(self.predictions).on_conflict_do_nothing(index_elements=["request_id", "role"])
        elif self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            self.insert = sqlite_insert(self.predictions).on_conflict_do_nothing(index_elements=["request_id", "role"])
        else:
            self.insert = self.predictions.insert()

    def __call__(self, partition: Partition, scored: pa.Table, rows: pa.Table) -> None:
        n = scored.num_rows
        keys = scored.column(self.contract.key_column).to_pylist()
        timestamps = (
            scored.column(self.contract.timestamp_column).to_pylist()
            if self.contract.timestamp_column
            else scored.column("scored_at").to_pylist()
        )
        values: dict[str, list[Any]] = {
            "request_id": [f"batch-{partition.part.removeprefix('part-')[:16]}-{k}" for k in keys],
            "model_name": scored.column("model_name").to_pylist(),
            "model_version": scored.column("model_version").to_pylist(),
            "timestamp": timestamps,
            "latency_ms": [0.0] * n,
            "prediction": [self.schema.label_value(v) for v in scored.column("prediction").to_pylist()],
            "flags": [None] * n,
            "role": [DEFAULT_ROLE] * n,  # the version scoring: monitoring reads it with the served rows
            "source": [BATCH] * n,
        }
        probabilities = {c: scored.column(c).to_pylist() for c in scored.column_names if c.startswith("p_")}
        positive = label_text(self.contract.target.positive_class) if self.contract.task == "binary" else None
        values["probability"] = (
            probabilities.get(f"p_{identifier(positive)}", [None] * n) if positive is not None else [None] * n
        )
        for label, sql in self.schema.proba_sql.items():
            values[sql] = probabilities.get(f"p_{identifier(label)}", [None] * n)
        for name, sql in self.schema.input_sql.items():
            column = rows.column(name)
            if pa.types.is_timestamp(column.type) and column.type.tz is not None:
                column = pc.cast(column, pa.timestamp("us"))  # the log's input timestamps are naive UTC
            values[sql] = _plain(column)
        params = [{c: values[c][i] for c in self.columns} for i in range(n)]
        with self.engine.begin() as conn:
            for start in range(0, n, 10_000):
                conn.execute(self.insert, params[start : start + 10_000])

    def close(self) -> None:
        self.engine.dispose()


def _plain(column: pa.ChunkedArray) -> list[Any]:
    if pa.types.is_boolean(column.type):
        return [None if v is None else float(v) for v in column.to_pylist()]
    return list(column.to_pylist())


# ---- a run ----------------------------------------------------------------------------------------------
def _finish(
    partition: Partition,
    result: PartitionResult,
    marker: Path,
    warehouse: WarehouseSink | None,
    details: dict[str, Any],
) -> None:
    """On the writer thread, after the partition's files: its warehouse rows, then its done marker."""
    assert result.committed is not None
    result.committed.result()  # already run (same thread, earlier): raises if its files failed
    if warehouse is not None:
        warehouse.commit(partition)
    write_json_atomic(marker, {**result.to_dict(), **details, "scored_at": utc_now()})
    log.info("scored %s: %d scored, %d refused", partition.key, result.scored, result.refused)


def score(
    settings: Settings,
    *,
    model: ScoringModel | None = None,
    version: str | None = None,
    dates: list[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    rescore: bool = False,
) -> dict[str, Any]:
    """Score the chosen raw partitions; return (and write) the run's manifest.

    Without dates, start or end, ``scoring.partitions`` chooses: ``new`` scores what has no done marker
    yet (everything new since the last run), ``all`` every partition. Done partitions are skipped unless
    `rescore`. `model` is a preloaded ScoringModel (tests, the benchmark); else `version` or the alias.
    """
    contract = settings.contract
    out = output_dir(settings)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    raw = settings.data_dir / "raw"
    found = partitions(raw)
    if not found:
        raise ScoringError(f"nothing to score: no raw partitions under {raw} (run collect first)")
    chosen = select(found, dates=dates, start=start, end=end)
    window = "dates" if dates is not None else "range" if (start or end) else settings.scoring.partitions
    model = model or load_model(settings, version=version)
    started, t0 = utc_now(), time.perf_counter()
    warehouse = (
        WarehouseSink(settings.warehouse_url, settings.scoring.warehouse_table)
        if settings.scoring.warehouse_table
        else None
    )
    logger = PredictionLogSink(settings.prediction_log_url, contract) if settings.scoring.log_predictions else None
    results: list[PartitionResult] = []
    finishing: list[Future[None]] = []
    details = {"model_name": model.name, "model_version": model.version, "run_id": model.run_id, "scoring_run": run_id}
    try:
        if settings.dask.address:
            if warehouse is not None:
                warehouse.close()
            if logger is not None:
                logger.close()
            warehouse = logger = None  # each task writes its own partition's rows
            results = _score_on_dask(settings, model, chosen, out, rescore=rescore, details=details)
            chosen = []
        # One writer thread for the run: partition k's files, warehouse rows and done marker are written
        # while partition k+1 is read and predicted; its tasks run in order, the marker last.
        with ThreadPoolExecutor(1, thread_name_prefix="score-write") as writer:
            for partition in chosen:
                marker = done_marker(out, partition)
                if marker.exists() and not rescore:
                    results.append(PartitionResult(partition=partition.key, date=partition.date, skipped=True))
                    continue
                for done in [f for f in finishing if f.done()]:  # a failed partition stops the run
                    done.result()
                sinks: list[Sink] = [s for s in (warehouse, logger) if s is not None]
                try:
                    result = score_partition(
                        partition,
                        model,
                        contract,
                        out,
                        batch_rows=settings.scoring.batch_rows,
                        sinks=sinks,
                        writer=writer,
                        explain=settings.scoring.explain,
                    )
                except BaseException:
                    if warehouse is not None:
                        warehouse.discard(partition)
                    raise
                finishing.append(writer.submit(_finish, partition, result, marker, warehouse, details))
                results.append(result)
        for done in finishing:
            done.result()
    finally:
        for sink in (warehouse, logger):
            if sink is not None:
                sink.close()
    scored = [r for r in results if not r.skipped]
    totals = {k: sum(getattr(r, k) for r in scored) for k in ("read", "scored", "refused")}
    if totals["scored"] + totals["refused"] != totals["read"]:
        raise ScoringError(f"accounting broke: {totals}")
    seconds = time.perf_counter() - t0
    manifest = {
        "run_id": run_id,
        "started_at": started,
        "finished_at": utc_now(),
        "window": window,
        "model_name": model.name,
        "model_version": model.version,
        "model_run_id": model.run_id,
        "runtime": model.predictor.runtime,
        "explain": _explain_summary(model, settings.scoring.explain),
        "executor": f"dask {settings.dask.address}" if settings.dask.address else "local",
        **totals,
        "partitions_scored": len(scored),
        "partitions_skipped": len(results) - len(scored),
        "seconds": round(seconds, 3),
        "rows_per_s": round(totals["read"] / seconds, 1) if seconds > 0 and totals["read"] else 0.0,
        "output_dir": str(out),
        "warehouse_table": settings.scoring.warehouse_table,
        "partitions": [r.to_dict() for r in results],
    }
    write_json_atomic(out / "manifests" / f"score-{run_id}.json", manifest)
    return manifest


def _explain_summary(model: ScoringModel, k: int) -> dict[str, Any] | None:
    """What the reason-code columns hold: the method and output, or why they are null."""
    if not k:
        return None
    explainer = model.predictor.explainer
    if not explainer.available:
        return {"k": k, "method": "unavailable", "reason": explainer.reason}
    return {"k": k, "method": explainer.method, "output": explainer.output}


# ---- on a Dask cluster ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ModelSpec:
    """What a worker needs to build the run's predictor itself: the fitted Pipeline and how the client's
    predictor was built (its runtime is checked on the worker, so both score the same way)."""

    token: str  # the Pipeline's content hash: the worker's cache key
    name: str
    version: str
    run_id: str | None
    pipeline: Any
    threshold: float | None
    positive_class: Any
    runtime: str


_WORKER_MODELS: dict[str, ScoringModel] = {}  # per worker process: each version is built once
_WORKER_LOCK = threading.Lock()


def _worker_model(spec: _ModelSpec, settings: Settings) -> ScoringModel:
    with _WORKER_LOCK:
        model = _WORKER_MODELS.get(spec.token)
        if model is None:
            predictor = Predictor.build(
                spec.pipeline,
                settings.contract,
                threshold=spec.threshold,
                positive_class=spec.positive_class,
                use_onnx=spec.runtime == "onnx",
                threads=settings.serving.threads_per_worker,
                parity_rows=settings.serving.parity_rows,
                tolerance=settings.serving.parity_tolerance,
            )
            if predictor.runtime != spec.runtime:
                raise ScoringError(
                    f"the worker's predictor runs on {predictor.runtime}, the client's on {spec.runtime}: "
                    f"predictions would differ ({predictor.fallback_reason})"
                )
            model = ScoringModel(spec.name, spec.version, spec.run_id, predictor)
            _WORKER_MODELS[spec.token] = model
        return model


def _score_task(settings: Settings, spec: _ModelSpec, partition: Partition, out: Path) -> PartitionResult:
    """One partition on a Dask worker: its files, warehouse rows and prediction-log rows, as locally."""
    model = _worker_model(spec, settings)
    warehouse = (
        WarehouseSink(settings.warehouse_url, settings.scoring.warehouse_table)
        if settings.scoring.warehouse_table
        else None
    )
    logger = (
        PredictionLogSink(settings.prediction_log_url, settings.contract) if settings.scoring.log_predictions else None
    )
    try:
        result = score_partition(
            partition,
            model,
            settings.contract,
            out,
            batch_rows=settings.scoring.batch_rows,
            sinks=[s for s in (warehouse, logger) if s is not None],
            explain=settings.scoring.explain,
        )
        if warehouse is not None:
            warehouse.commit(partition)
    except BaseException:
        if warehouse is not None:
            warehouse.discard(partition)
        raise
    finally:
        for sink in (warehouse, logger):
            if sink is not None:
                sink.close()
    result.committed = None  # a local future: not sent back
    return result


def _score_on_dask(
    settings: Settings,
    model: ScoringModel,
    chosen: list[Partition],
    out: Path,
    *,
    rescore: bool,
    details: dict[str, Any],
) -> list[PartitionResult]:
    """One task per partition on the cluster at ``dask.address``; each partition's done marker is written
    here, after its task returned (its files, warehouse and log rows already in place), as locally.

    The workers read the raw snapshot and write the outputs at the same paths as this process: on more
    than one machine, data_dir and scoring.output_dir must be on a shared filesystem (docs/scaling.md)."""
    import joblib  # scikit-learn's own dependency
    from distributed import as_completed

    from core.cluster import ClusterUnreachableError, connect

    predictor = model.predictor
    spec = _ModelSpec(
        token=joblib.hash(predictor.pipeline),
        name=model.name,
        version=model.version,
        run_id=model.run_id,
        pipeline=predictor.pipeline,
        threshold=predictor.threshold,
        positive_class=predictor.positive_class,
        runtime=predictor.runtime,
    )
    results: dict[str, PartitionResult] = {}
    todo = []
    for partition in chosen:
        if done_marker(out, partition).exists() and not rescore:
            results[partition.key] = PartitionResult(partition=partition.key, date=partition.date, skipped=True)
        else:
            todo.append(partition)
    if todo:
        assert settings.dask.address is not None  # the caller's condition
        try:
            client = connect(settings.dask.address, settings.dask.connect_timeout_s)
        except ClusterUnreachableError as exc:
            raise ScoringError(str(exc)) from exc
        with client:
            shared = client.scatter(spec, broadcast=True)  # the Pipeline sent once to each worker
            futures = {
                client.submit(_score_task, settings, shared, p, out, key=f"score-{p.key}-{uuid.uuid4().hex[:6]}"): p
                for p in todo
            }
            try:
                for future in as_completed(futures):
                    partition = futures[future]
                    result: PartitionResult = future.result()
                    write_json_atomic(
                        done_marker(out, partition), {**result.to_dict(), **details, "scored_at": utc_now()}
                    )
                    log.info("scored %s on dask: %d scored, %d refused", partition.key, result.scored, result.refused)
                    results[partition.key] = result
            finally:
                client.cancel(list(futures))
    return [results[p.key] for p in chosen]
