"""The prediction log: every prediction and every late label, written by a background thread.

A response never waits for the store: rows go to an in-memory queue and a writer thread inserts
them in batches. When an insert fails (the store is down, the disk is read-only) the batch is
appended to a spool file (JSON lines, one file per process) and replayed once the store answers
again; the insert ignores request ids already present, so a replay never duplicates a row. Spool
files left by an earlier process are replayed at start. Nothing is dropped.

Tables: `predictions` (request_id, model_name, model_version, timestamp, latency_ms, one column per
contract input column, prediction, probability, flags) and `feedback` (request_id, label,
received_at). Monitoring reads them with `read_predictions` and `read_feedback`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.contract import DatasetContract
from serving import metrics

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
_META = ("request_id", "model_name", "model_version", "timestamp", "latency_ms", "prediction", "probability", "flags")


def engine_for(url: str) -> sa.Engine:
    """An engine for a SQLAlchemy URL; plain postgresql:// means psycopg 3 (installed), not psycopg2."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return sa.create_engine(url, connect_args={"timeout": 5})
    if url.startswith("postgresql+psycopg://"):
        return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 3})
    return sa.create_engine(url, pool_pre_ping=True)


def _label_type(contract: DatasetContract) -> sa.types.TypeEngine[Any]:
    if not contract.is_classification:
        return sa.Float()
    classes = contract.target.classes or ()
    return sa.Integer() if all(isinstance(c, int) for c in classes) else sa.String(200)


def tables(contract: DatasetContract, metadata: sa.MetaData | None = None) -> tuple[sa.Table, sa.Table]:
    metadata = metadata or sa.MetaData()
    clash = sorted(set(_META) & set(contract.input_columns))
    if clash:
        raise ValueError(f"contract columns {clash} clash with the prediction log's own columns")
    feature_cols = []
    for name in contract.input_columns:
        kind = contract.column(name).type
        col_type: sa.types.TypeEngine[Any] = (
            sa.Float() if kind in ("float", "int", "bool") else sa.DateTime() if kind == "datetime" else sa.String(200)
        )
        feature_cols.append(sa.Column(name, col_type, nullable=True))
    predictions = sa.Table(
        PREDICTIONS,
        metadata,
        sa.Column("request_id", sa.String(120), primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(40), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        *feature_cols,
        sa.Column("prediction", _label_type(contract) if contract.is_classification else sa.Float()),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("flags", sa.String(1000), nullable=True),
    )
    feedback = sa.Table(
        FEEDBACK,
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(120), nullable=False, index=True),
        sa.Column("label", _label_type(contract), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    return predictions, feedback


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    raise TypeError(f"cannot spool {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> Any:
    return datetime.fromisoformat(obj["$dt"]) if set(obj) == {"$dt"} else obj


class PredictionLog:
    """Batched, non-blocking writer of predictions and feedback with a spool for store outages."""

    def __init__(
        self,
        url: str,
        contract: DatasetContract,
        spool_dir: Path,
        *,
        batch_rows: int = 500,
        flush_s: float = 0.5,
        retry_s: float = 2.0,
    ) -> None:
        self.url = url
        self.contract = contract
        self.spool_dir = spool_dir
        self.batch_rows = batch_rows
        self.flush_s = flush_s
        self.retry_s = retry_s
        self._engine = engine_for(url)
        self._metadata = sa.MetaData()
        self.predictions, self.feedback = tables(contract, self._metadata)
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._schema_ready = False
        self._next_retry = 0.0
        self.store_up = True
        self._spool_file = spool_dir / f"spool-{os.getpid()}.jsonl"
        self._spool_lock = threading.Lock()

    # ---- producer side: called from request handlers, never blocks on I/O ------------------------
    def log_prediction(self, row: dict[str, Any]) -> None:
        self._queue.append((PREDICTIONS, row))
        if len(self._queue) >= self.batch_rows:
            self._wake.set()

    def log_predictions(self, rows: Iterable[dict[str, Any]]) -> None:
        self._queue.extend((PREDICTIONS, r) for r in rows)
        self._wake.set()

    def log_feedback(self, request_id: str, label: Any) -> None:
        self._queue.append((FEEDBACK, {"request_id": request_id, "label": label, "received_at": datetime.now(UTC)}))
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

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
                self._write_batch(self._take(self.batch_rows * 20 if not self.store_up else self.batch_rows))
            if stopping:
                return

    def _take(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        while self._queue and len(out) < n:
            out.append(self._queue.popleft())
        return out

    def _write_batch(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        if not batch:
            return
        if not self.store_up and time.monotonic() < self._next_retry:
            self._spool(batch)
            return
        try:
            self._insert(batch)
            self.store_up = True
            metrics.LOG_ROWS.labels(outcome="written").inc(len(batch))
        except Exception as exc:
            if not _store_unavailable(exc):
                self._reject(batch, exc)
                return
            if self.store_up:
                log.warning("prediction store %s unavailable, spooling to %s: %s", self.url, self.spool_dir, exc)
            self.store_up = False
            self._next_retry = time.monotonic() + self.retry_s
            self._spool(batch)

    def _insert(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        preds = [r for t, r in batch if t == PREDICTIONS]
        fb = [r for t, r in batch if t == FEEDBACK]
        with self._engine.begin() as conn:
            if not self._schema_ready:
                self._metadata.create_all(conn)
                self._schema_ready = True
            if preds:
                conn.execute(self._insert_ignoring_duplicates(), preds)
            if fb:
                conn.execute(self.feedback.insert(), fb)

    def _insert_ignoring_duplicates(self) -> Any:
        dialect = self._engine.dialect.name
        if dialect == "sqlite":
            return sqlite_insert(self.predictions).on_conflict_do_nothing(index_elements=["request_id"])
        if dialect == "postgresql":
            return pg_insert(self.predictions).on_conflict_do_nothing(index_elements=["request_id"])
        return self.predictions.insert()

    def _spool(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        with self._spool_lock, self._spool_file.open("a") as fh:
            for table, row in batch:
                fh.write(json.dumps([table, row], default=_encode) + "\n")
        metrics.LOG_ROWS.labels(outcome="spooled").inc(len(batch))

    def _reject(self, batch: list[tuple[str, dict[str, Any]]], exc: Exception) -> None:
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
                    try:
                        self._insert(chunk)
                    except Exception as exc:
                        if _store_unavailable(exc):
                            raise
                        self._reject(chunk, exc)
                        continue
                    metrics.LOG_ROWS.labels(outcome="replayed").inc(len(chunk))
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
            if pid.isdigit() and not _alive(int(pid)):
                orphan.rename(self.spool_dir / f"spool-orphan-{orphan.name}")


def _store_unavailable(exc: Exception) -> bool:
    """An outage (connection refused, database locked or read-only, disk full), as opposed to rows the
    store refuses; only an outage is worth spooling and retrying."""
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.DisconnectionError | OSError)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_spool(path: Path) -> list[tuple[str, dict[str, Any]]]:
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


# ---- readers for monitoring: pandas + SQLAlchemy only ---------------------------------------------


def read_predictions(url: str, since: datetime | None = None, limit: int | None = None) -> pd.DataFrame:
    """Logged predictions, oldest first; `since` filters on the prediction timestamp (UTC)."""
    engine = engine_for(url)
    try:
        if not sa.inspect(engine).has_table(PREDICTIONS):
            return pd.DataFrame()
        table = sa.Table(PREDICTIONS, sa.MetaData(), autoload_with=engine)
        query = sa.select(table).order_by(table.c.timestamp)
        if since is not None:
            query = query.where(table.c.timestamp >= since)
        if limit is not None:
            query = query.limit(limit)
        with engine.connect() as conn:
            return pd.read_sql(query, conn)
    finally:
        engine.dispose()


def read_feedback(url: str) -> pd.DataFrame:
    """Every label received, the latest per request id last."""
    engine = engine_for(url)
    try:
        if not sa.inspect(engine).has_table(FEEDBACK):
            return pd.DataFrame(columns=["request_id", "label", "received_at"])
        table = sa.Table(FEEDBACK, sa.MetaData(), autoload_with=engine)
        query = sa.select(table.c.request_id, table.c.label, table.c.received_at).order_by(table.c.received_at)
        with engine.connect() as conn:
            return pd.read_sql(query, conn)
    finally:
        engine.dispose()
