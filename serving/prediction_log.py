"""The prediction log: every prediction and every late label, written by a background thread.

A response never waits for the store: rows go to an in-memory queue and a writer thread inserts
them in batches. When an insert fails (the store is down, the disk is read-only) the batch is
appended to a spool file (JSON lines, one file per process) and replayed once the store answers
again; the insert ignores request ids already present, so a replay never duplicates a row. Spool
files left by an earlier process are replayed at start. Nothing is dropped.

The tables' schema and the readers monitoring uses live in core/predictions.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from core.contract import DatasetContract, label_text
from core.databases import engine_for, libpq_url, sqlite_time
from core.predictions import DEFAULT_ROLE, FEEDBACK, PREDICTIONS, TRAILING_DEFAULTS, LogSchema, ensure_tables
from core.servers import process_alive
from serving import metrics

if TYPE_CHECKING:
    from adbc_driver_manager.dbapi import Connection as AdbcConnection

log = logging.getLogger(__name__)
# The longest a request waits for the writer to catch up (then it goes on; the backlog is still bounded by
# the requests that can arrive meanwhile).
BACKPRESSURE_MAX_S = 2.0

Row = tuple[str, Any]  # (table, row): a tuple of values in column order for predictions, a dict for feedback


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    return repr(value)  # anything else is kept readable for a person rather than lost


def _decode(obj: dict[str, Any]) -> Any:
    return datetime.fromisoformat(obj["$dt"]) if set(obj) == {"$dt"} else obj


Block = dict[str, Any]  # column -> n values (numpy array or list) or one value shared by every row


class PredictionLog:
    """Batched, non-blocking writer of predictions and feedback with a spool for store outages.

    Handlers hand over whole column blocks (the arrays they predicted from), so a 10,000-row batch
    costs the response one queue append. On PostgreSQL the writer thread sends the blocks' arrays with
    binary COPY (:meth:`_copy_rows`); elsewhere it turns them into rows and inserts them with one
    `executemany` per batch, bypassing the ORM-level per-row processing.
    """

    def __init__(
        self,
        url: str,
        contract: DatasetContract,
        spool_dir: Path,
        *,
        batch_rows: int = 500,
        flush_s: float = 0.5,
        retry_s: float = 2.0,
        max_backlog_rows: int = 50_000,
    ) -> None:
        self.url = url
        self.max_backlog_rows = max_backlog_rows
        self.contract = contract
        self.spool_dir = spool_dir
        self.batch_rows = batch_rows
        self.flush_s = flush_s
        self.retry_s = retry_s
        self._engine = engine_for(url)
        self._sqlite = self._engine.dialect.name == "sqlite"
        # PostgreSQL: binary COPY through the ADBC driver, a few times the rows a second of a batched INSERT.
        self._copy = self._engine.dialect.name == "postgresql" and self._engine.dialect.driver == "psycopg"
        self._adbc: AdbcConnection | None = None  # the writer thread's own connection for COPY
        self._adbc_schema: pa.Schema | None = None  # the log's columns as that connection reads them
        self._metadata = sa.MetaData()
        self.schema = LogSchema(contract)
        self.predictions, self.feedback = self.schema.tables(self._metadata)
        self._columns = [c.name for c in self.predictions.columns]
        # Where each SQL column's values sit in a block: blocks use the contract's column names.
        self._keys = [self.schema.block_key(c) for c in self._columns]
        self._insert_sql = self._build_insert_sql()
        self._stage_sql = self._build_stage_sql()
        self._queue: deque[tuple[str, Any]] = deque()
        self._backlog = 0  # rows queued, not yet written or spooled
        self._backlog_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._schema_ready = False
        self._next_retry = 0.0
        self.store_up = True
        self._spool_file = spool_dir / f"spool-{os.getpid()}.jsonl"
        self._spool_lock = threading.Lock()

    def _build_insert_sql(self) -> str:
        dialect = self._engine.dialect
        quote = dialect.identifier_preparer.quote
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        sql = (
            f"INSERT INTO {quote(PREDICTIONS)} ({', '.join(quote(c) for c in self._columns)}) "
            f"VALUES ({', '.join([mark] * len(self._columns))})"
        )
        # A replay after a partial failure may resend rows already written: skip them, never duplicate.
        if dialect.name in ("sqlite", "postgresql"):
            sql += " ON CONFLICT (request_id, role) DO NOTHING"
        return sql

    def _build_stage_sql(self) -> tuple[str, str]:
        """(Create the staging table; move its rows into the log, skipping known request ids).

        COPY cannot skip a row that is already there. New rows are copied straight into the log; when a
        request id is already there (a replayed spool, a client reusing an id), the batch is copied into
        a temporary table of the connection (emptied at commit) and moved with one
        INSERT ... SELECT ... ON CONFLICT DO NOTHING, inside PostgreSQL.
        """
        quote = self._engine.dialect.identifier_preparer.quote
        columns = ", ".join(quote(c) for c in self._columns)
        stage = quote(_STAGE)
        return (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (LIKE {quote(PREDICTIONS)}) ON COMMIT DELETE ROWS",
            f"INSERT INTO {quote(PREDICTIONS)} ({columns}) SELECT {columns} FROM {stage} "
            "ON CONFLICT (request_id, role) DO NOTHING",
        )

    # ---- producer side: called from request handlers, never blocks on I/O ------------------------
    def log_block(self, block: Block, n_rows: int, *, wait: bool = True) -> None:
        """`n_rows` predictions as columns: the contract's input columns (by their contract names), the log's
        own columns, and for a multiclass model ``probabilities`` (n x k) with its ``classes``. ``role`` defaults
        to the champion's. ``wait=False``: no back-pressure here; an ``async`` caller awaits :meth:`room`."""
        if block.get("role") is None:
            block["role"] = DEFAULT_ROLE
        self._queue.append((PREDICTIONS, (block, n_rows)))
        self._count(n_rows)
        # No wake-up here: the writer runs every flush_s (or when many blocks queue up), not in the
        # middle of the response that produced the block.
        if len(self._queue) >= self.batch_rows:
            self._wake.set()
        if wait:
            self._hold_back()

    def log_predictions(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if rows:
            block = {k: [r.get(k) for r in rows] for k in self._keys}
            block["role"] = [r.get("role") or DEFAULT_ROLE for r in rows]
            self.log_block(block, len(rows))

    def log_feedback(self, request_id: str, label: Any, *, wait: bool = True) -> None:
        row = {"request_id": request_id, "label": self.schema.label_value(label), "received_at": datetime.now(UTC)}
        self._queue.append((FEEDBACK, row))
        self._count(1)
        self._wake.set()
        if wait:
            self._hold_back()

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def backlog_rows(self) -> int:
        return self._backlog

    def _count(self, rows: int) -> None:
        with self._backlog_lock:
            self._backlog += rows

    def _hold_back(self) -> None:
        """Backpressure: past `max_backlog_rows` queued rows, the caller (the request that added them) waits
        until the writer has taken the backlog down to half, at most BACKPRESSURE_MAX_S.

        The writer is a thread of the same process: a worker answering flat out leaves it too little of the
        interpreter to keep up, and its queue (memory) would grow without end. Waiting here slows the answers
        to the rate at which every prediction is logged; nothing is dropped. A writer that cannot write at
        all spools to disk, so the wait ends either way."""
        if not self._over_backlog():
            return
        started = time.monotonic()
        while self._still_over(started):
            time.sleep(0.002)
        metrics.LOG_BACKPRESSURE.inc(time.monotonic() - started)

    async def room(self) -> None:
        """:meth:`_hold_back` for a request handled on the event loop: the request that added rows waits,
        while the loop goes on serving the worker's other requests (health checks and metrics among them);
        a `time.sleep` there would stop the whole worker."""
        if not self._over_backlog():
            return
        started = time.monotonic()
        while self._still_over(started):
            await asyncio.sleep(0.002)
        metrics.LOG_BACKPRESSURE.inc(time.monotonic() - started)

    def _over_backlog(self) -> bool:
        if self._backlog <= self.max_backlog_rows or self._thread is None:
            return False
        self._wake.set()
        return True

    def _still_over(self, started: float) -> bool:
        return self._backlog > self.max_backlog_rows // 2 and time.monotonic() - started < BACKPRESSURE_MAX_S

    def spool_bytes(self) -> int:
        """Bytes waiting in spool files (claimed ones included): the backlog of a store outage."""
        total = 0
        for path in self.spool_dir.glob("*.jsonl") if self.spool_dir.exists() else []:
            if not path.name.startswith("rejected-"):
                with contextlib.suppress(FileNotFoundError):  # replayed and removed by another worker meanwhile
                    total += path.stat().st_size
        return total

    # ---- the writer thread -----------------------------------------------------------------------
    def start(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (or spool it) and stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._engine.dispose()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty (written or spooled). For tests and shutdown."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        return not self._queue

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            self._replay_spool()
            while self._queue:
                batch, taken = self._take(self.batch_rows * 20)
                self._write_batch(batch)
                self._written(taken)
            metrics.LOG_SPOOL_BYTES.set(self.spool_bytes())
            if stopping:
                self._close_adbc()
                return

    def _take(self, max_rows: int) -> tuple[list[Row], int]:
        """Up to `max_rows` queued rows as a batch, and how many rows it holds."""
        out: list[Row] = []
        taken = 0
        while self._queue and taken < max_rows:
            table, item = self._queue.popleft()
            if table == FEEDBACK:
                out.append((FEEDBACK, item))
                taken += 1
                continue
            if self._copy:  # kept as columns until COPY writes them; rows only if they must be spooled
                out.append((_BLOCK, item))
                taken += item[1]
                continue
            taken += item[1]
            try:
                out.extend((PREDICTIONS, row) for row in self._rows(*item))
            except Exception as exc:  # a block that cannot become rows must not stop the writer
                log.exception("prediction-log block dropped to the rejected file")
                self._reject([(PREDICTIONS, _jsonable_block(item[0]))], exc)
        return out, taken

    def _written(self, rows: int) -> None:
        """Rows taken from the queue have reached the store, the spool or the rejected file."""
        with self._backlog_lock:
            self._backlog -= rows

    def _expand(self, batch: list[Row]) -> list[Row]:
        """The batch with its blocks as rows (what the spool and the rejected file hold)."""
        out: list[Row] = []
        for table, item in batch:
            if table != _BLOCK:
                out.append((table, item))
                continue
            try:
                out.extend((PREDICTIONS, row) for row in self._rows(*item))
            except Exception as exc:
                log.exception("prediction-log block dropped to the rejected file")
                self._reject([(PREDICTIONS, _jsonable_block(item[0]))], exc)
        return out

    def _block_arrays(self, block: Block, n: int) -> list[pa.Array]:
        """One block as Arrow arrays in the log's column order (numpy and Arrow arrays as they are, no row
        built)."""
        probs, classes = block.get("probabilities"), block.get("classes")
        arrays = []
        for key in self._keys:
            value = block.get(key)
            if key.startswith("proba:"):
                value = None
                if probs is not None and classes is not None:
                    value = np.asarray(probs)[:, [label_text(c) for c in classes].index(key.removeprefix("proba:"))]
            elif key == "prediction" and self.schema.label_is_text:
                value = [self.schema.label_value(v) for v in self._values(value, n)]
            arrays.append(_arrow_column(value, n))
        return arrays

    def _rows(self, block: Block, n: int) -> list[tuple[Any, ...]]:
        probs, classes = block.get("probabilities"), block.get("classes")
        columns = []
        for key in self._keys:
            if key.startswith("proba:"):
                value = None
                if probs is not None and classes is not None:
                    value = np.asarray(probs)[:, [label_text(c) for c in classes].index(key.removeprefix("proba:"))]
                columns.append(self._values(value, n))
            elif key == "prediction" and self.schema.label_is_text:
                columns.append([self.schema.label_value(v) for v in self._values(block.get(key), n)])
            else:
                columns.append(self._values(block.get(key), n))
        return list(zip(*columns, strict=True))

    def _values(self, v: Any, n: int) -> list[Any]:
        if isinstance(v, np.ndarray):
            if v.dtype.kind == "f":
                out = v.astype(object)
                out[np.isnan(v)] = None
                return list(out.tolist())
            if v.dtype.kind == "M":
                us = v.astype("datetime64[us]")
                if self._sqlite:  # SQLite has no timestamp type: ISO text, as SQLAlchemy reads it back
                    text = np.datetime_as_string(us).astype(object)
                    text[np.isnat(us)] = None
                    return list(text.tolist())
                return list(us.tolist())
            return list(v.tolist())
        if isinstance(v, list):
            return [self._scalar(x) for x in v] if self._sqlite else v
        if hasattr(v, "to_pylist"):  # an Arrow array (batch request ids)
            return list(v.to_pylist())
        return [self._scalar(v)] * n

    def _scalar(self, v: Any) -> Any:
        if isinstance(v, datetime) and self._sqlite:
            if v.tzinfo is not None:
                v = v.astimezone(UTC).replace(tzinfo=None)
            # isoformat's "T" would sort after every bound and batch scoring's rows (SQLite compares the text).
            return sqlite_time(v)
        if isinstance(v, np.generic):
            return v.item()
        return v

    def _parts(self, batch: list[Row]) -> list[list[Row]]:
        """The batch as the store transactions that write it: on the COPY path predictions go through the
        ADBC connection and feedback through SQLAlchemy's, two transactions, so each part is written,
        spooled or refused on its own (predictions committed are never sent to the rejected file because
        the feedback beside them was refused)."""
        if not self._copy:
            return [batch]
        predictions = [r for r in batch if r[0] != FEEDBACK]
        feedback = [r for r in batch if r[0] == FEEDBACK]
        return [part for part in (predictions, feedback) if part]

    def _write_batch(self, batch: list[Row]) -> None:
        for part in self._parts(batch):
            self._write_part(part)

    def _write_part(self, batch: list[Row]) -> None:
        if not batch:
            return
        if not self.store_up and time.monotonic() < self._next_retry:
            self._spool(self._expand(batch))
            return
        try:
            self._insert(batch)
            self.store_up = True
            metrics.LOG_ROWS.labels(outcome="written").inc(sum(i[1] if t == _BLOCK else 1 for t, i in batch))
        except Exception as exc:
            if not _store_unavailable(exc):
                self._reject(self._expand(batch), exc)
                return
            if self.store_up:
                log.warning("prediction store %s unavailable, spooling to %s: %s", self.url, self.spool_dir, exc)
            self.store_up = False
            self._next_retry = time.monotonic() + self.retry_s
            self._spool(self._expand(batch))

    def _insert(self, batch: list[Row]) -> None:
        preds = [r for t, r in batch if t == PREDICTIONS]
        blocks = [r for t, r in batch if t == _BLOCK]
        fb = [r for t, r in batch if t == FEEDBACK]
        if not self._schema_ready:
            ensure_tables(self._engine, self._metadata)
            self._schema_ready = True
        # Rows spooled before roles (and before sources) existed have one or two values fewer: they were
        # the champion's, answered online.
        width = len(self._columns)
        preds = [r if len(r) == width else (*r, *TRAILING_DEFAULTS[len(r) - width :]) for r in preds]
        if (preds or blocks) and self._copy:
            columns = [self._block_arrays(*b) for b in blocks]
            if preds:  # rows replayed from the spool
                columns.append([_arrow_column(list(values), len(preds)) for values in zip(*preds, strict=True)])
            self._copy_rows(columns)
            preds = []
        if preds or fb:
            with self._engine.begin() as conn:
                if preds:
                    conn.exec_driver_sql(self._insert_sql, [tuple(r) for r in preds])
                if fb:
                    conn.execute(self.feedback.insert(), fb)

    def _copy_rows(self, parts: list[list[pa.Array]]) -> None:
        """Rows (each part: one array per log column) into the log with binary COPY, in a transaction of
        their own on the ADBC connection: the Arrow arrays go to PostgreSQL as they are (no value formatted
        as text here, none parsed there), written in C++ without the GIL.

        A connection that has been used before may have been closed by the server meanwhile (a restart,
        an idle timeout): one failure there is retried once on a new connection (safe: a batch committed
        before the failure is skipped by the retry, never duplicated), so a stale connection is not an
        outage."""
        import adbc_driver_manager

        fresh = self._adbc is None
        try:
            self._ingest(parts)
        except adbc_driver_manager.OperationalError:
            if fresh:
                raise
            self._ingest(parts)

    def _ingest(self, parts: list[list[pa.Array]]) -> None:
        import adbc_driver_manager

        conn = self._adbc_connection()
        try:
            schema = self._adbc_schema
            assert schema is not None
            table = pa.Table.from_batches([pa.record_batch(_cast(arrays, schema), schema=schema) for arrays in parts])
            create, move = self._stage_sql
            with conn.cursor() as cur:
                try:
                    cur.adbc_ingest(PREDICTIONS, table, mode="append")
                except adbc_driver_manager.IntegrityError as exc:
                    if exc.sqlstate != _UNIQUE_VIOLATION:
                        raise
                    # Some request ids are already logged: copy beside, keep only the new ones.
                    conn.rollback()
                    cur.execute(create)
                    cur.adbc_ingest(_STAGE, table, mode="append", temporary=True)
                    cur.execute(move)
            conn.commit()
        except Exception:
            self._close_adbc()  # a new connection for the next batch: this one may be broken or mid-transaction
            raise

    def _adbc_connection(self) -> AdbcConnection:
        """The writer's ADBC connection (opened on first use, to the engine's database), and the log's columns
        as it reads them."""
        if self._adbc is None:
            import adbc_driver_postgresql.dbapi

            conn = adbc_driver_postgresql.dbapi.connect(libpq_url(self._engine.url))
            try:
                self._adbc_schema = _copy_schema(conn.adbc_get_table_schema(PREDICTIONS), self._columns)
            except Exception:
                conn.close()
                raise
            self._adbc = conn
        return self._adbc

    def _close_adbc(self) -> None:
        conn, self._adbc = self._adbc, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a connection the server already closed
                conn.close()

    def _spool(self, batch: list[Row]) -> None:
        with self._spool_lock, self._spool_file.open("a") as fh:
            for table, row in batch:
                fh.write(json.dumps([table, row], default=_encode) + "\n")
        metrics.LOG_ROWS.labels(outcome="spooled").inc(len(batch))

    def _reject(self, batch: list[Row], exc: Exception) -> None:
        """Rows the store refuses (not an outage): kept in a file for a person, never retried forever."""
        log.error("prediction store refused %d rows (kept in %s): %s", len(batch), self.spool_dir, exc)
        path = self.spool_dir / f"rejected-{os.getpid()}.jsonl"
        with self._spool_lock, path.open("a") as fh:
            for table, row in batch:
                fh.write(json.dumps([table, row], default=_encode) + "\n")
        metrics.LOG_ROWS.labels(outcome="rejected").inc(len(batch))

    def _replay_spool(self) -> None:
        """Insert spooled rows once the store answers; each file is claimed by rename, so two workers
        never replay the same rows."""
        if time.monotonic() < self._next_retry:
            return
        files = sorted(p for p in self.spool_dir.glob("spool-*.jsonl")) if self.spool_dir.exists() else []
        for path in files:
            claimed = path.with_name(f"replay-{os.getpid()}-{path.name}")
            with self._spool_lock:
                try:
                    path.rename(claimed)
                except FileNotFoundError:
                    continue
            try:
                for chunk in _chunks(_read_spool(claimed), self.batch_rows * 20):
                    for part in self._parts(chunk):
                        try:
                            self._insert(part)
                        except Exception as exc:
                            if _store_unavailable(exc):
                                raise
                            self._reject(part, exc)
                            continue
                        metrics.LOG_ROWS.labels(outcome="replayed").inc(len(part))
            except Exception as exc:
                self.store_up = False
                self._next_retry = time.monotonic() + self.retry_s
                with self._spool_lock:
                    # Put the whole file back; rows already inserted are skipped on the next replay.
                    if path.exists():
                        with path.open("a") as fh:
                            fh.write(claimed.read_text())
                        claimed.unlink()
                    else:
                        claimed.rename(path)
                log.info("store still unavailable, %s kept for later: %s", path.name, exc)
                return
            claimed.unlink()
            self.store_up = True
            log.info("replayed spooled rows from %s", path.name)
        # Files claimed by a process that died mid-replay: take them over.
        for orphan in self.spool_dir.glob("replay-*.jsonl") if self.spool_dir.exists() else []:
            pid = orphan.name.split("-")[1]
            if pid.isdigit() and not process_alive(int(pid)):
                orphan.rename(self.spool_dir / f"spool-orphan-{orphan.name}")


_BLOCK = "predictions-block"  # a queued block kept as columns (the COPY path)
_STAGE = f"{PREDICTIONS}_copy_stage"  # the COPY path's temporary table, for batches with known request ids
_UNIQUE_VIOLATION = "23505"


def _arrow_column(value: Any, n: int) -> pa.Array:
    """A block's value for one column as n Arrow values: an array as it is, a scalar repeated, NaN/NaT as
    missing, booleans as numbers (the log stores them so)."""
    if value is None:
        return pa.nulls(n)
    if isinstance(value, pa.ChunkedArray):
        array = value.combine_chunks()
    elif isinstance(value, pa.Array):
        array = value
    elif isinstance(value, np.ndarray):
        if value.dtype.kind == "M":
            value = value.astype("datetime64[us]")
        array = pa.array(value if value.dtype.kind != "U" else value.astype(object), from_pandas=True)
    elif isinstance(value, list):
        array = pa.array(value, from_pandas=True)
    else:  # one value for the whole block (model name, version, the request's time): repeated by Arrow
        array = pa.repeat(pa.scalar(value.item() if isinstance(value, np.generic) else value, from_pandas=True), n)
    if pa.types.is_boolean(array.type):
        array = array.cast(pa.int8())
    return array


def _copy_schema(table: pa.Schema, columns: list[str]) -> pa.Schema:
    """The Arrow types binary COPY must send for the log's `columns`: those the ADBC driver reads the table's
    columns as (float8 as float64, int4 as int32, varchar as string, timestamptz as UTC timestamps...), the
    types it writes back as the same PostgreSQL types. Binary COPY does not convert: an int64 sent to an int4
    column is refused, so every array is cast to these first. A type the driver has no Arrow type for (it
    reads it as an opaque extension type) cannot be written this way: named here, not sent as bytes."""
    fields = []
    for name in columns:
        field = table.field(name)
        if isinstance(field.type, pa.BaseExtensionType):
            raise TypeError(f"the {PREDICTIONS} column {name!r} has a PostgreSQL type binary COPY cannot write")
        fields.append(pa.field(name, field.type))
    return pa.schema(fields)


def _cast(arrays: list[pa.Array], schema: pa.Schema) -> list[pa.Array]:
    """`arrays` as the columns' types, checked (a fraction in an integer column fails, as PostgreSQL would
    refuse it as text); finer timestamps are cut to the microsecond PostgreSQL keeps."""
    return [
        array
        if array.type == field.type
        else pc.cast(array, options=pc.CastOptions(field.type, allow_time_truncate=True))
        for array, field in zip(arrays, schema, strict=True)
    ]


def _store_unavailable(exc: Exception) -> bool:
    """An outage (connection refused, database locked or read-only, disk full), as opposed to rows the
    store refuses; only an outage is worth spooling and retrying."""
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.DisconnectionError | OSError):
        return True
    # The COPY path talks to the ADBC driver's own connection, so its errors arrive unwrapped by SQLAlchemy:
    # a connection refused or lost mid-COPY, a server shutting down (SQLSTATE classes 08, 57, 53: the driver's
    # IO status) is an outage too, not rows the store refuses (a unique or data error: IntegrityError, DataError).
    try:
        import adbc_driver_manager
    except ImportError:
        return False
    return isinstance(exc, adbc_driver_manager.OperationalError | adbc_driver_manager.InterfaceError)


def _jsonable_block(block: Block) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return v.astype(str).tolist()
        return v.to_pylist() if hasattr(v, "to_pylist") else v  # Arrow arrays (batch ids and flags)

    return {k: plain(v) for k, v in block.items()}


def _read_spool(path: Path) -> list[Row]:
    rows = []
    with path.open() as fh:
        for line in fh:
            if line.strip():
                table, row = json.loads(line, object_hook=_decode)
                rows.append((table, row))
    return rows


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
