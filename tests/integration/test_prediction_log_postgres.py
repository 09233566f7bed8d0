"""The prediction log on a real PostgreSQL: COPY writes every value as the INSERT path did, a request id
already logged is skipped (never duplicated, never a refused batch), and monitoring's window is a
bounded query that PostgreSQL answers from the timestamp index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from core.contract import parse_contract
from core.predictions import PREDICTIONS, read_predictions
from core.settings import get_settings
from serving.prediction_log import PredictionLog
from tests.serving_support import wait_for


def _log(url: str, spool: Path, contract: Any = None) -> PredictionLog:
    plog = PredictionLog(url, contract or get_settings().contract, spool, batch_rows=50, flush_s=0.05, retry_s=0.1)
    assert plog._copy, "psycopg 3 on PostgreSQL: the COPY path"
    plog.start()
    return plog


def _fraud_block(ids: list[str], when: datetime) -> dict[str, Any]:
    contract = get_settings().contract
    n = len(ids)
    block: dict[str, Any] = {name: np.array([contract.column(name).example] * n) for name in contract.input_columns}
    block["amount"] = np.where(np.arange(n) % 3 == 0, np.nan, np.arange(n) * 1.25)  # NaN: stored as NULL
    block["event_time"] = np.array([np.datetime64("2026-01-15T13:45:00.123456")] * n)
    block |= {
        "request_id": pa.array(ids),
        "model_name": "card-fraud",
        "model_version": "7",
        "timestamp": when,
        "latency_ms": 0.75,
        "prediction": np.arange(n) % 2,
        "probability": np.linspace(0, 1, n),
        "flags": [None if i % 2 else "" for i in range(n)],  # an empty string is not a missing value
    }
    return block


def test_copy_writes_every_value_and_skips_request_ids_already_logged(postgres_url: str, tmp_path: Path) -> None:
    when = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    plog = _log(postgres_url, tmp_path / "spool")
    try:
        plog.log_block(_fraud_block([f"a-{i}" for i in range(1_000)], when), 1_000)
        assert plog.flush()
        # The same ids again beside new ones (a replay, a client reusing ids): the new ones only.
        again = [f"a-{i}" for i in range(990, 1_000)] + [f"b-{i}" for i in range(20)]
        plog.log_block(_fraud_block(again, when + timedelta(seconds=1)), len(again))
        assert plog.flush()
    finally:
        plog.stop()
    frame = read_predictions(postgres_url)
    assert len(frame) == 1_020 and frame["request_id"].is_unique
    first = frame.set_index("request_id").loc[[f"a-{i}" for i in range(1_000)]]
    assert first["amount"].isna().sum() == 334  # every third NaN
    assert first["amount"].iloc[1] == 1.25
    assert first["prediction"].tolist() == [i % 2 for i in range(1_000)]
    assert np.allclose(first["probability"], np.linspace(0, 1, 1_000))
    assert first["flags"].iloc[0] == "" and first["flags"].iloc[1] is None
    assert str(first["event_time"].iloc[0]) == "2026-01-15 13:45:00.123456"
    assert (first["model_version"] == "7").all()
    assert (_utc(first["timestamp"]) == when).all()
    assert not list(plog.spool_dir.glob("rejected-*.jsonl"))  # nothing refused


def _utc(values: Any) -> Any:
    stamps = pd.to_datetime(values)
    return stamps.dt.tz_convert("UTC") if stamps.dt.tz is not None else stamps.dt.tz_localize("UTC")


def test_multiclass_text_labels_and_awkward_names_go_through_copy(postgres_url: str, tmp_path: Path) -> None:
    contract = parse_contract(
        {
            "name": "penguins",
            "task": "multiclass",
            "target": {"name": "species", "classes": ["Adelie", "Chinstrap", "Gentoo"]},
            "columns": [
                {"name": "Body mass (g)", "type": "float", "nullable": True},
                {"name": "2nd island", "type": "category", "categories": ["Biscoe", "Dream"], "nullable": True},
                {"name": "ringed?", "type": "bool", "nullable": True},
                {"name": "species", "type": "category", "categories": ["Adelie", "Chinstrap", "Gentoo"]},
            ],
        }
    )
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    block = {
        "Body mass (g)": np.array([4200.5, np.nan]),
        "2nd island": np.array(["Dream", None], dtype=object),
        "ringed?": np.array([True, False]),
        "request_id": ["p-0", "p-1"],
        "model_name": "penguins",
        "model_version": "1",
        "timestamp": datetime.now(UTC),
        "latency_ms": 2.0,
        "prediction": np.array(["Adelie", "Gentoo"], dtype=object),
        "probability": None,
        "flags": None,
        "probabilities": probs,
        "classes": ["Adelie", "Chinstrap", "Gentoo"],
    }
    plog = _log(postgres_url, tmp_path / "spool", contract)
    try:
        plog.log_block(block, 2)
        assert plog.flush()
    finally:
        plog.stop()
    frame = read_predictions(postgres_url).set_index("request_id")
    assert frame.loc["p-0", "Body_mass_g"] == 4200.5 and np.isnan(frame.loc["p-1", "Body_mass_g"])
    assert frame.loc["p-0", "c_2nd_island"] == "Dream" and frame.loc["p-1", "c_2nd_island"] is None
    assert frame["ringed"].tolist() == [1.0, 0.0]
    assert frame["prediction"].tolist() == ["Adelie", "Gentoo"]
    assert frame[["p_Adelie", "p_Chinstrap", "p_Gentoo"]].to_numpy().tolist() == probs.tolist()


def test_monitorings_window_is_a_bounded_index_scan(postgres_url: str, tmp_path: Path) -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    plog = _log(postgres_url, tmp_path / "spool")
    try:
        for b in range(20):  # 20,000 rows, one block a minute
            ids = [f"w-{b}-{i}" for i in range(1_000)]
            plog.log_block(_fraud_block(ids, start + timedelta(minutes=b)), len(ids))
        assert plog.flush(60)
    finally:
        plog.stop()
    window = read_predictions(postgres_url, since=start + timedelta(minutes=5), limit=2_500, newest=True)
    assert len(window) == 2_500
    assert window["request_id"].str.startswith(("w-17-", "w-18-", "w-19-")).all()  # the newest rows
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"ANALYZE {PREDICTIONS}"))
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    sa.text(
                        f"EXPLAIN SELECT * FROM {PREDICTIONS} WHERE timestamp >= :since "
                        "ORDER BY timestamp DESC LIMIT 2500"
                    ),
                    {"since": start + timedelta(minutes=5)},
                )
            )
    finally:
        engine.dispose()
    assert "Limit" in plan and "Index Scan Backward" in plan, plan  # not a scan and sort of the whole log


def test_a_table_made_before_roles_gains_the_role_column_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    from tests.unit.test_serving_prediction_log import check_roles_migration

    check_roles_migration(postgres_url, tmp_path / "spool")


def test_an_older_log_gains_the_source_column_online_and_batch_rows_told_apart(
    postgres_url: str, tmp_path: Path
) -> None:
    """A log written before the `source` column existed keeps working: the API's writer adds the column
    (its old rows and the API's new ones read as online), batch scoring's rows read as batch."""
    from core.inference.scoring import OutputSchema, Partition, PredictionLogSink

    contract = get_settings().contract
    when = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    engine = sa.create_engine(postgres_url)
    metadata = sa.MetaData()
    from core.predictions import tables

    predictions, _ = tables(contract, metadata)
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.exec_driver_sql(f"ALTER TABLE {PREDICTIONS} DROP COLUMN source")
        conn.execute(
            predictions.insert().values(
                request_id="old-1", model_name="card-fraud", model_version="1", timestamp=when, latency_ms=1.0
            )
        )
    engine.dispose()
    plog = _log(postgres_url, tmp_path / "spool")
    try:
        plog.log_block(_fraud_block(["new-1", "new-2"], when), 2)
        assert plog.flush()
    finally:
        plog.stop()
    # Batch scoring's rows through its sink, with the output columns a scored partition has.
    inputs = pd.DataFrame({name: [contract.column(name).example] * 3 for name in contract.input_columns})
    inputs[contract.timestamp_column] = pd.Timestamp("2026-01-15T13:45:00", tz="UTC")
    rows = pa.Table.from_pandas(inputs, preserve_index=False)
    scored = pa.table(
        {
            contract.key_column: pa.array(["k1", "k2", "k3"]),
            contract.timestamp_column: pa.array([when] * 3, pa.timestamp("us", tz="UTC")),
            "prediction": pa.array([0, 1, 0]),
            **dict(
                zip(
                    OutputSchema(contract, contract.classes).proba.values(),  # p_<class>, as a scored file names them
                    [pa.array([0.9, 0.2, 0.8]), pa.array([0.1, 0.8, 0.2])],
                    strict=True,
                )
            ),
            "model_name": pa.array(["card-fraud"] * 3),
            "model_version": pa.array(["1"] * 3),
            "run_id": pa.array(["r"] * 3),
            "scored_at": pa.array([when] * 3, pa.timestamp("us", tz="UTC")),
        }
    )
    sink = PredictionLogSink(postgres_url, contract)
    partition = Partition(path=tmp_path / "x.parquet", date="2026-01-15", part="part-0123456789abcdef0123")
    sink(partition, scored, rows)
    sink(partition, scored, rows)  # the same partition again (a resumed run): nothing doubled
    sink.close()
    frame = read_predictions(postgres_url)
    assert dict(zip(frame["request_id"], frame["source"], strict=True)) == {
        "old-1": "online",
        "new-1": "online",
        "new-2": "online",
        **{f"batch-0123456789abcdef-k{i}": "batch" for i in (1, 2, 3)},
    }
    batch = frame[frame["source"] == "batch"].sort_values("request_id")
    assert batch["probability"].tolist() == [0.1, 0.8, 0.2]


def test_workers_creating_the_log_at_the_same_moment_all_succeed(postgres_url: str) -> None:
    """Two API workers on a new database both created the tables at their first write: one got 'relation
    "predictions" already exists', and its first batch went to the rejected file (found by the prod-local
    loop test: 1,750 rows)."""
    import threading

    from core.databases import engine_for
    from core.predictions import LogSchema, ensure_tables

    contract = get_settings().contract
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def create() -> None:
        engine = engine_for(postgres_url)
        metadata = sa.MetaData()
        LogSchema(contract).tables(metadata)
        try:
            start.wait()
            ensure_tables(engine, metadata)
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert {PREDICTIONS, "feedback"} <= set(sa.inspect(engine_for(postgres_url)).get_table_names())


def _awkward_block(contract: Any, ids: list[str], when: datetime) -> dict[str, Any]:
    """A block of every value a text format could get wrong, for any contract: missing values of every type
    (NaN, NaT, None), an empty string beside a missing one, quotes, commas and non-ASCII text, booleans,
    integers into float columns, a request time in another time zone."""
    n = len(ids)
    i = np.arange(n)
    block: dict[str, Any] = {}
    for column in contract.columns:
        if column.name == contract.target.name:
            continue
        if column.type == "float":
            block[column.name] = np.where(i % 4 == 0, np.nan, (i - 3) * 1.0000001e-3)
        elif column.type == "int":
            block[column.name] = i * 7 - 20
        elif column.type == "bool":
            block[column.name] = i % 3 == 0
        elif column.type == "datetime":
            stamps = np.datetime64("2026-01-15T13:45:00.123456") + i.astype("timedelta64[s]")
            block[column.name] = np.where(i % 5 == 0, np.datetime64("NaT"), stamps)
        else:
            texts = np.array([None, "", 'a "quoted", comma', "Zürich", "plain"], dtype=object)
            block[column.name] = texts[i % len(texts)]
    classes = contract.classes
    if contract.task == "regression":
        prediction: Any = np.linspace(-1.5, 1e6, n)
    else:
        prediction = np.array([classes[k % len(classes)] for k in range(n)], dtype=object)
    probs = np.linspace(0, 1, n * max(len(classes), 1)).reshape(n, -1) if classes else None
    block |= {
        "request_id": ids,
        "model_name": contract.name,
        "model_version": "3",
        "timestamp": when,
        "latency_ms": 0.125,
        "prediction": prediction,
        "probability": probs[:, -1] if probs is not None and len(classes) == 2 else None,
        "flags": [None, "", "a,b", 'say "hi"'] * (n // 4) + [None] * (n % 4),
    }
    if contract.task == "multiclass":
        block["probabilities"], block["classes"] = probs, list(classes)
    return block


def _contracts() -> list[Any]:
    from tests.scoring_support import CONTRACTS

    return [get_settings().contract, *(parse_contract(c) for c in CONTRACTS.values())]


@pytest.mark.parametrize("contract", _contracts(), ids=lambda c: f"{c.name}-{c.task}")
def test_binary_copy_stores_what_the_insert_path_stores(postgres_url: str, tmp_path: Path, contract: Any) -> None:
    """The COPY path (Arrow arrays sent as PostgreSQL's binary format) and the INSERT path (psycopg binding
    Python values) store the same values for every contract: text, integer and boolean labels, class
    probability columns, regression values, missing values of every type, empty strings kept apart from
    NULL, timestamps with and without a time zone."""
    when = datetime(2026, 12, 1, 9, 30, 15, 250_000, tzinfo=timezone(timedelta(hours=2)))
    n = 40
    for path, copy in (("copy", True), ("insert", False)):
        plog = PredictionLog(postgres_url, contract, tmp_path / path, batch_rows=50, flush_s=0.05, retry_s=0.1)
        plog._copy = copy
        plog.start()
        try:
            plog.log_block(_awkward_block(contract, [f"{path}-{i:03d}" for i in range(n)], when), n)
            assert plog.flush()
        finally:
            plog.stop()
        assert not list((tmp_path / path).glob("*.jsonl"))  # nothing spooled, nothing refused
    frame = read_predictions(postgres_url).sort_values("request_id")
    copied, inserted = (
        frame[frame["request_id"].str.startswith(p)].drop(columns="request_id").reset_index(drop=True)
        for p in ("copy-", "insert-")
    )
    assert len(copied) == len(inserted) == n
    pd.testing.assert_frame_equal(copied, inserted)
    assert (_utc(copied["timestamp"]) == when).all()
    assert copied["flags"].tolist()[:4] == [None, "", "a,b", 'say "hi"']


def test_an_outage_in_the_middle_of_a_copy_spools_the_batch_and_replays_it_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """The writer's connection is cut while its COPY runs (the server terminates it) and the database refuses
    new connections: the batch goes to the spool, not to the rejected file, and is replayed once the database
    is back. The replayed batch holds request ids already logged: skipped, never duplicated."""
    import psycopg

    from tests.postgres import PG_HOST, PG_PORT, PG_USER

    db = postgres_url.rsplit("/", 1)[1]

    def connect(dbname: str) -> psycopg.Connection:
        return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True)

    when = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    spool = tmp_path / "spool"
    plog = _log(postgres_url, spool)
    try:
        plog.log_block(_fraud_block([f"a-{i}" for i in range(100)], when), 100)
        wait_for(lambda: len(read_predictions(postgres_url)) == 100)  # committed: the writer's connection is open
        with connect(db) as holder, connect("postgres") as admin:
            holder.execute("BEGIN")
            holder.execute(f"LOCK TABLE {PREDICTIONS} IN ACCESS EXCLUSIVE MODE")  # the next COPY waits here
            again = [f"a-{i}" for i in range(90, 100)] + [f"b-{i}" for i in range(50)]
            plog.log_block(_fraud_block(again, when), len(again))
            copying = wait_for(
                lambda: admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query LIKE 'COPY%%' "
                    "AND wait_event_type = 'Lock'",
                    (db,),
                ).fetchone()
            )
            admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(%s)", (copying[0],))
            wait_for(lambda: any(p.stat().st_size for p in spool.glob("spool-*.jsonl")))
            assert not plog.store_up
            holder.execute("ROLLBACK")
            admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        wait_for(lambda: len(read_predictions(postgres_url)) == 150, timeout=30)
        assert plog.flush()
    finally:
        with connect("postgres") as admin:
            admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        plog.stop()
    frame = read_predictions(postgres_url).set_index("request_id")
    assert frame.index.is_unique and len(frame) == 150
    assert not list(spool.glob("rejected-*.jsonl"))
    assert not [p for p in spool.glob("*.jsonl") if p.stat().st_size]  # the spool drained
    # The replayed rows went through the JSON spool: b-k sat where a-(10+k) sat in its block, same values.
    columns = ["amount", "event_time", "flags", "model_version", "prediction", "latency_ms", "role"]
    pd.testing.assert_frame_equal(
        frame.loc[[f"b-{k}" for k in range(50)], columns].reset_index(drop=True),
        frame.loc[[f"a-{10 + k}" for k in range(50)], columns].reset_index(drop=True),
    )
    assert frame.loc["b-2", "flags"] == "" and np.isnan(frame.loc["b-2", "amount"])  # not NULL / NULL
    assert (_utc(frame["timestamp"]) == when).all()
