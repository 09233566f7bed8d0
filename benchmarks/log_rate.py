"""The prediction log's sustained write rate: one PredictionLog (the writer one API worker runs), fed
prediction blocks as the API hands them over, until every row is in the store.

``python -m benchmarks.log_rate --rows 200000`` measures PostgreSQL (a throwaway database on
127.0.0.1:5432) with COPY and with the batched INSERT it replaces, and SQLite; bench-serving reports the
same figures. Each figure is rows / seconds from the first block queued to the last row committed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from core.predictions import PREDICTIONS
from core.settings import Settings

BLOCK_ROWS = 1_000  # a 1,000-row batch request, the API's usual block


def _blocks(settings: Settings, rows: int) -> list[tuple[dict[str, Any], int]]:
    from core.inference.sample import synthetic_frame

    frame = synthetic_frame(settings.contract, BLOCK_ROWS, seed=1)
    inputs = {c: frame[c].to_numpy() for c in settings.contract.input_columns}
    rng = np.random.default_rng(0)
    out = []
    for b in range(-(-rows // BLOCK_ROWS)):
        n = min(BLOCK_ROWS, rows - b * BLOCK_ROWS)
        block: dict[str, Any] = {c: v[:n] for c, v in inputs.items()}
        block |= {
            "request_id": [f"bench-{b}-{i}" for i in range(n)],
            "model_name": "bench",
            "model_version": "1",
            "timestamp": datetime.now(UTC),
            "latency_ms": 1.5,
            "prediction": rng.integers(0, 2, n),
            "probability": rng.random(n),
            "flags": None,
        }
        out.append((block, n))
    return out


def measure(url: str, settings: Settings, rows: int, *, copy: bool = True) -> dict[str, Any]:
    """Rows a second one PredictionLog sustains into ``url`` (``copy=False``: PostgreSQL's INSERT path)."""
    from serving.prediction_log import PredictionLog

    blocks = _blocks(settings, rows)
    with tempfile.TemporaryDirectory() as spool:
        plog = PredictionLog(url, settings.contract, Path(spool), batch_rows=500, flush_s=0.05)
        plog._copy = plog._copy and copy
        plog.start()
        try:
            plog.log_block(*blocks[0])  # creates the tables: not timed
            if not plog.flush(60):
                raise RuntimeError("the prediction log did not drain its first block")
            started, cpu = time.perf_counter(), time.process_time()
            for block in blocks[1:]:
                plog.log_block(*block)
            if not plog.flush(600):
                raise RuntimeError("the prediction log did not drain in 600 s")
        finally:
            plog.stop(timeout=600)  # returns once the last batch is committed
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                stored = conn.execute(sa.text(f"SELECT COUNT(*) FROM {PREDICTIONS}")).scalar()
        finally:
            engine.dispose()
    if stored != rows:
        raise RuntimeError(f"the log holds {stored} rows, {rows} were logged")
    timed = rows - blocks[0][1]
    # Client CPU (this process, every thread): the rest of the wall time is the database's.
    return {
        "rows": timed,
        "seconds": round(seconds, 3),
        "rows_per_s": round(timed / seconds),
        "client_cpu_s": round(cpu, 3),
    }


@contextlib.contextmanager
def postgres_database(host: str = "127.0.0.1", port: int = 5432, user: str = "postgres") -> Iterator[str]:
    """A throwaway PostgreSQL database; its URL."""
    import psycopg

    name = f"bench_log_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{user}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def predict_slowdown(url: str, settings: Settings, rows: int, *, copy: bool = True) -> dict[str, Any]:
    """How much the writer thread slows the predictions that feed it: the same blocks predicted by a
    model (a 150-tree random forest on one thread: about an API worker's batch rate here) with the log
    writing every block into ``url`` (``copy=False``: PostgreSQL's INSERT path), and with no log,
    alternately, 3 rounds each. On a 2-core machine the database server's own CPU counts in it too."""
    from sklearn.ensemble import RandomForestClassifier

    from serving.prediction_log import PredictionLog

    blocks = _blocks(settings, rows)
    numeric = [c for c in settings.contract.input_columns if blocks[0][0][c].dtype.kind in "fiub"]
    features = [np.column_stack([np.nan_to_num(b[c].astype(float)) for c in numeric]) for b, _ in blocks]
    rng = np.random.default_rng(0)
    model = RandomForestClassifier(n_estimators=150, max_depth=10, n_jobs=1, random_state=0)
    model.fit(features[0], rng.integers(0, 2, len(features[0])))

    def round_(plog: PredictionLog | None, tag: str) -> float:
        ids = [[f"{tag}-{i}-{j}" for j in range(n)] for i, (_, n) in enumerate(blocks)]  # not timed
        started = time.perf_counter()
        for (block, n), x, block_ids in zip(blocks, features, ids, strict=True):
            proba = model.predict_proba(x)
            if plog is not None:
                plog.log_block({**block, "request_id": block_ids, "probability": proba[:, 1]}, n)
        return rows / (time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as spool:
        plog = PredictionLog(url, settings.contract, Path(spool), batch_rows=500, flush_s=0.05)
        plog._copy = plog._copy and copy
        plog.start()
        try:
            with_log, without = [], []
            for r in range(3):
                without.append(round_(None, f"off{r}"))
                with_log.append(round_(plog, f"on{r}"))
                plog.flush(600)
        finally:
            plog.stop(timeout=600)
    best_with, best_without = max(with_log), max(without)
    return {
        "predict_rows_per_s_without_log": round(best_without),
        "predict_rows_per_s_with_log": round(best_with),
        "slowdown": round(1 - best_with / best_without, 3),
    }


def log_rates(settings: Settings, rows: int) -> dict[str, Any]:
    """PostgreSQL with COPY and with INSERT, and SQLite, each into an empty log; and the slowdown of the
    predictions feeding a COPY log."""
    out: dict[str, Any] = {}
    for name, copy in (("postgres_copy", True), ("postgres_insert", False)):
        with postgres_database() as url:
            out[name] = measure(url, settings, rows, copy=copy)
    for name, copy in (("postgres_copy_predict", True), ("postgres_insert_predict", False)):
        with postgres_database() as url:
            out[name] = predict_slowdown(url, settings, rows, copy=copy)
    with tempfile.TemporaryDirectory() as folder:
        out["sqlite"] = measure(f"sqlite:///{folder}/log.db", settings, rows)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args(argv)
    from core.settings import get_settings

    print(json.dumps(log_rates(get_settings(), args.rows), indent=2))


if __name__ == "__main__":
    main()
