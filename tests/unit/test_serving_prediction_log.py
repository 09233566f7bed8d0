"""The prediction log's writer in process, against SQLite: batches, the spool, the replay, the readers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.predictions import read_feedback, read_predictions
from core.settings import get_settings
from serving import metrics
from serving.prediction_log import PredictionLog
from tests.serving_support import wait_for


def row(i: int, **overrides: Any) -> dict[str, Any]:
    contract = get_settings().contract
    out: dict[str, Any] = {name: contract.column(name).example for name in contract.input_columns}
    out["event_time"] = datetime(2026, 1, 15, 13, 45)
    out.update(
        request_id=f"r-{i}",
        model_name="m",
        model_version="1",
        timestamp=datetime.now(UTC),
        latency_ms=0.5,
        prediction=i % 2,
        probability=0.25,
        flags=None,
    )
    out.update(overrides)
    return out


def spool_gauge() -> float:
    value = metrics.REGISTRY.get_sample_value("serving_prediction_log_spool_bytes")
    assert value is not None
    return value


def make_log(url: str, spool: Path) -> PredictionLog:
    plog = PredictionLog(url, get_settings().contract, spool, batch_rows=50, flush_s=0.05, retry_s=0.1)
    plog.start()
    return plog


def test_rows_and_feedback_reach_the_store_with_one_column_per_feature(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    plog = make_log(url, tmp_path / "spool")
    try:
        plog.log_predictions(row(i) for i in range(120))
        plog.log_feedback("r-3", 1)
        assert plog.flush()
        wait_for(lambda: len(read_predictions(url)) == 120)
    finally:
        plog.stop()
    df = read_predictions(url)
    assert set(get_settings().contract.input_columns) <= set(df.columns)
    assert df["amount"].eq(42.5).all()
    assert len(read_predictions(url, limit=10)) == 10
    assert read_feedback(url)[["request_id", "label"]].values.tolist() == [["r-3", 1]]


def test_rows_spool_while_the_store_is_down_and_replay_when_it_is_back(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    db.mkdir()  # a directory where the database file should be: SQLite cannot open it
    url = f"sqlite:///{db}"
    spool = tmp_path / "spool"
    plog = make_log(url, spool)
    try:
        plog.log_predictions(row(i) for i in range(300))
        wait_for(lambda: sum(p.stat().st_size for p in spool.glob("spool-*.jsonl")) > 0)
        assert not plog.store_up
        # The backlog gauge (alerted on by deploy/prometheus/alerts.yml) shows the spooled bytes.
        wait_for(lambda: spool_gauge() > 0)
        db.rmdir()  # the store is back
        wait_for(lambda: len(read_predictions(url)) == 300, timeout=30)
        wait_for(lambda: spool_gauge() == 0)
        plog.log_predictions([row(1000)])
        wait_for(lambda: len(read_predictions(url)) == 301)
    finally:
        plog.stop()
    stored = read_predictions(url)
    assert stored["request_id"].is_unique
    assert stored["event_time"].notna().all()  # timestamps survive the JSON spool
    assert not [p for p in spool.glob("*.jsonl") if p.stat().st_size]


def test_spool_left_by_an_earlier_process_is_replayed_at_start(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    db.mkdir()
    url = f"sqlite:///{db}"
    spool = tmp_path / "spool"
    first = make_log(url, spool)
    first.log_predictions(row(i) for i in range(40))
    first.stop()  # the store never came back while this process lived
    assert sum(p.stat().st_size for p in spool.glob("spool-*.jsonl")) > 0
    db.rmdir()
    second = make_log(url, spool)
    try:
        wait_for(lambda: len(read_predictions(url)) == 40)
    finally:
        second.stop()


def test_rows_the_store_refuses_are_kept_aside_not_retried(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    spool = tmp_path / "spool"
    plog = make_log(url, spool)
    try:
        plog.log_predictions([row(1, amount={"not", "a number"})])  # the driver cannot bind a set
        wait_for(lambda: any(spool.glob("rejected-*.jsonl")))
        plog.log_predictions([row(2)])
        wait_for(lambda: read_predictions(url)["request_id"].tolist() == ["r-2"])
    finally:
        plog.stop()
    assert plog.store_up


def check_roles_migration(url: str, spool: Path) -> None:
    """A predictions table made before roles (request_id alone as the key) gains `role` when a writer starts:
    its rows read back as the champion's, and a shadow row can share a request id with its answer."""
    import sqlalchemy as sa

    from core.databases import engine_for
    from core.predictions import tables

    metadata = sa.MetaData()
    predictions, _ = tables(get_settings().contract, metadata)
    old = sa.Table(
        "predictions",
        sa.MetaData(),
        *(
            sa.Column(c.name, c.type, nullable=c.nullable, primary_key=c.name == "request_id")
            for c in predictions.c
            if c.name != "role"
        ),
    )
    engine = engine_for(url)
    with engine.begin() as conn:
        old.create(conn)
        before = {k: v for k, v in row(0, request_id="old-1").items() if k in old.c}
        conn.execute(old.insert(), [before])
    engine.dispose()

    plog = make_log(url, spool)
    try:
        plog.log_predictions([row(1, request_id="new-1"), row(1, request_id="new-1", role="shadow", prediction=0)])
        assert plog.flush()
        wait_for(lambda: len(read_predictions(url, roles=None)) == 3)
    finally:
        plog.stop()
    served = read_predictions(url)
    assert sorted(served["request_id"]) == ["new-1", "old-1"]
    assert set(served["role"]) == {"champion"}
    every = read_predictions(url, roles=None)
    assert sorted(every.loc[every["request_id"] == "new-1", "role"]) == ["champion", "shadow"]
    engine = engine_for(url)
    try:
        key = sa.inspect(engine).get_pk_constraint("predictions")["constrained_columns"]
    finally:
        engine.dispose()
    assert sorted(key) == ["request_id", "role"]


def test_a_table_made_before_roles_gains_the_role_column(tmp_path: Path) -> None:
    check_roles_migration(f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "spool")


def test_a_writer_that_falls_behind_holds_the_requests_back_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make soak: a worker answering flat out starved its writer thread and the queue (memory) grew without
    end. Past max_backlog_rows the request adding rows waits for the writer; every row is still written."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    plog = PredictionLog(url, get_settings().contract, tmp_path / "spool", batch_rows=50, flush_s=0.05,
                         max_backlog_rows=100)  # fmt: skip
    slow_insert = plog._insert

    def slow(batch: list[Any]) -> None:
        time.sleep(0.002 * len(batch))  # 500 rows a second: a store (or a starved thread) behind the requests
        slow_insert(batch)

    monkeypatch.setattr(plog, "_insert", slow)
    base = row(0)
    rows = [{**base, "request_id": f"r-{i}"} for i in range(1_500)]  # the requests outpace the writer
    waited_before = metrics.LOG_BACKPRESSURE._value.get()
    plog.start()
    try:
        most = 0
        for one in rows:
            plog.log_predictions([one])
            most = max(most, plog.backlog_rows)
        assert most <= 101, f"the backlog reached {most} rows"
        assert metrics.LOG_BACKPRESSURE._value.get() > waited_before
        assert plog.flush(30)
    finally:
        plog.stop()
    assert len(read_predictions(url)) == 1_500
    assert plog.backlog_rows == 0


def test_an_async_request_waits_for_room_while_the_event_loop_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's handlers run on the event loop: a request held back by the log's writer must wait alone.
    A `time.sleep` there stopped the whole worker (its health check and every other request) for up to
    BACKPRESSURE_MAX_S."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    plog = PredictionLog(url, get_settings().contract, tmp_path / "spool", batch_rows=50, flush_s=0.05,
                         max_backlog_rows=100)  # fmt: skip
    slow_insert = plog._insert

    def slow(batch: list[Any]) -> None:
        time.sleep(0.002 * len(batch))
        slow_insert(batch)

    monkeypatch.setattr(plog, "_insert", slow)
    base = row(0)

    async def requests() -> tuple[float, int]:
        """200 one-row requests as the API makes them, and a ticker that counts while they wait."""
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        for i in range(200):
            block = {k: [v] for k, v in {**base, "request_id": f"a-{i}"}.items() if k != "role"}
            plog.log_block(block, 1, wait=False)
            await plog.room()
        waited = time.monotonic() - started
        stop.set()
        await task
        return waited, ticks

    waited_before = metrics.LOG_BACKPRESSURE._value.get()
    plog.start()
    try:
        waited, ticks = asyncio.run(requests())
        assert metrics.LOG_BACKPRESSURE._value.get() > waited_before, "the requests were held back"
        assert plog.backlog_rows <= 101
        # Held back for `waited` seconds, the loop still ran the ticker (1 ms sleeps) most of that time.
        assert ticks >= waited / 0.001 * 0.1, f"{ticks} ticks in {waited:.2f} s: the event loop was blocked"
        assert plog.flush(30)
    finally:
        plog.stop()
    assert len(read_predictions(url)) == 200


def test_binary_copy_names_a_column_type_it_cannot_write() -> None:
    """PostgreSQL's binary COPY does not convert: the Arrow types sent must be the columns' own. A column the
    ADBC driver reads as an opaque type (numeric, say) is named, never sent as bytes it would misread."""
    import pyarrow as pa

    from serving.prediction_log import _cast, _copy_schema

    opaque = pa.opaque(pa.string(), "numeric", "PostgreSQL")
    with pytest.raises(TypeError, match="'amount'"):
        _copy_schema(pa.schema([("request_id", pa.string()), ("amount", opaque)]), ["request_id", "amount"])
    schema = _copy_schema(pa.schema([("prediction", pa.int32()), ("x", pa.float64())]), ["prediction", "x"])
    cast = _cast([pa.array([1, 0]), pa.array([1, 0], pa.int8())], schema)  # int64 and booleans as int8
    assert [a.type for a in cast] == [pa.int32(), pa.float64()]
    with pytest.raises(pa.ArrowInvalid):  # a fraction in an integer column is refused, not cut
        _cast([pa.array([1.5]), pa.array([1.0])], schema)


def test_a_span_of_the_log_reads_its_rows_and_only_their_labels(tmp_path: Path) -> None:
    """A window's slice (monitoring.sources.LogSlice) reads the rows predicted in its span and the labels of
    those requests only: a label that arrived after the slice began, for a request predicted after it ended,
    is not read."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    times = [datetime(2026, 1, 15, h, tzinfo=UTC) for h in (8, 9, 10, 11)]
    plog = make_log(url, tmp_path / "spool")
    try:
        plog.log_predictions(row(i, timestamp=t) for i, t in enumerate(times))
        for i in range(4):
            plog.log_feedback(f"r-{i}", i % 2)
        assert plog.flush()
        wait_for(lambda: len(read_feedback(url)) == 4)
    finally:
        plog.stop()
    # The API's rows compare with bound times as SQLAlchemy's own would (SQLite compares the text).
    assert list(read_predictions(url, since=times[1], until=times[2])["request_id"]) == ["r-1", "r-2"]
    slice_labels = read_feedback(url, since=times[1], of_predictions=(times[1], times[2]))
    assert sorted(slice_labels["request_id"]) == ["r-1", "r-2"]
    assert len(read_feedback(url, since=times[1])) == 4  # every label received since then: all four
