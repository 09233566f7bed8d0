"""Scored rows into a warehouse table that does not exist yet, from several writers at once (the Dask
workers of one scoring run): the first writers race to create it, and no partition is lost.

Seen under `make test`: two Dask workers' first partitions both created the SQLite table, and one failed
with "table scores already exists".
"""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from core.inference.scoring import PARTITION_COLUMN, Partition, WarehouseSink

WRITERS = 6
ROWS = 50


def _race(url: str) -> None:
    start = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        sink = WarehouseSink(url, "scores")
        partition = Partition(Path(f"raw/2026-01-0{i + 1}/part-{i}.parquet"), f"2026-01-0{i + 1}", f"part-{i}")
        sink(partition, pa.table({"key": [f"{i}-{n}" for n in range(ROWS)], "p": [0.5] * ROWS}), pa.table({}))
        start.wait()
        try:
            sink.commit(partition)
        except BaseException as exc:
            errors.append(exc)
        finally:
            sink.engine.dispose()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            counts = dict(conn.execute(sa.text(f"SELECT {PARTITION_COLUMN}, COUNT(*) FROM scores GROUP BY 1")).all())
    finally:
        engine.dispose()
    assert len(counts) == WRITERS and set(counts.values()) == {ROWS}, counts


def test_writers_racing_to_create_the_sqlite_table_lose_nothing(tmp_path: Path) -> None:
    _race(f"sqlite:///{tmp_path / 'warehouse.db'}")


@pytest.mark.postgres
def test_writers_racing_to_create_the_postgres_table_lose_nothing(postgres_url: str) -> None:
    _race(postgres_url)
