"""Collection and preprocessing with `dask.address` set, on a real Dask cluster (distributed.LocalCluster, 2
worker processes), against the same runs without it, over the same source: the fraud contract from a SQLite
warehouse and from a PostgreSQL one (with the simulator's faulty rows: nulls, out-of-range values and text in a
number column), and generated non-fraud contracts from Parquet files (a multiclass contract with text labels and
an id; one without a timestamp; one without an id, which collects in the flow's process and says why) and from a
SQLite table (the multiclass one). Without Dask, a SQL source is read both ways: in parts by two connections at
once (collection.readers, the default) and by one query.

Each case runs two collections (the second one incremental, past the first one's watermark) and preprocessing,
in a local data directory and a Dask one, and compares: the part files (paths, rows, fingerprints), the
quarantined rows and their reasons, the counts and fault counts, the watermark, and the splits' manifest
(rows, fingerprints, classes) and files. `collection.chunk_rows` is small so each run has several parts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from core.data.collection import run_collection
from core.data.splits import build_splits
from core.settings import Settings, get_settings
from tests import generated
from tests.postgres import fresh_database, sqlalchemy_url

pytestmark = pytest.mark.slow

AS_OF = "2026-12-31"  # after every simulated label has matured
CHUNK_ROWS = 700


def _fraud_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str | None = None) -> Callable[[int], None]:
    """A SQLite warehouse (or the database at `url`); each call adds days, the second with the simulator's
    data-quality faults."""
    from demo.simulator import write_warehouse

    url = url or f"sqlite:///{tmp_path / 'warehouse.db'}"
    monkeypatch.setenv("MLOPS_WAREHOUSE_URL", url)
    contract = get_settings().contract

    def grow(step: int) -> None:
        scenario = "none" if step == 0 else "data_quality"
        write_warehouse(url, days=6 + 3 * step, rows_per_day=900, scenario=scenario, contract=contract)

    return grow


def _generated_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, timestamp: bool, id_column: bool) -> None:
    raw = generated.contract_dict("multiclass")
    raw["name"] = "generated-orders"
    if id_column:
        raw["id_column"] = "Order #"
        raw["columns"].insert(0, {"name": "Order #", "type": "string"})
    if not timestamp:
        raw["timestamp_column"] = None
        raw["derived_time_features"] = []
        raw["columns"] = [c for c in raw["columns"] if c["name"] != "Seen at"]
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    monkeypatch.setenv("MLOPS_CONFIG", "configs/settings.yaml")
    monkeypatch.setenv("MLOPS_CONTRACT_PATH", str(path))
    monkeypatch.setenv("MLOPS_SOURCE__KIND", "parquet")
    monkeypatch.setenv("MLOPS_SOURCE__PATH", str(tmp_path / "lake"))


def _generated_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, timestamp: bool = True, id_column: bool = True
) -> Callable[[int], None]:
    """Parquet files of a generated multiclass table (text labels) with bad rows; each call adds files
    of newer rows (Parquet files of several row groups, so parts start inside a row group)."""
    _generated_contract(tmp_path, monkeypatch, timestamp=timestamp, id_column=id_column)
    contract = get_settings().contract
    lake = tmp_path / "lake"
    lake.mkdir()

    def grow(step: int) -> None:
        frame, labels = generated.frame_for(contract, 2_500, seed=10 + step)
        frame = frame.assign(**{generated.TARGET: labels}).astype({"spend/€": object, "2nd plan": object})
        frame["Seen at"] = frame["Seen at"] + pd.Timedelta(days=70 * step)
        rng = np.random.default_rng(step)
        frame.loc[rng.choice(len(frame), 20, replace=False), "spend/€"] = "n/a"  # a wrong type
        frame.loc[rng.choice(len(frame), 15, replace=False), "2nd plan"] = "platinum"  # not a category
        frame.loc[rng.choice(len(frame), 10, replace=False), generated.TARGET] = None  # no label
        frame["spend/€"] = frame["spend/€"].astype(str)
        if id_column:
            frame.insert(0, "Order #", [f"o-{step}-{i:05d}" for i in range(len(frame))])
            frame.loc[[7, 8], "Order #"] = "o-dup"  # a duplicate id, in one part
        if not timestamp:
            frame = frame.drop(columns=["Seen at"])
        half = len(frame) // 2
        for k, rows in enumerate((frame.iloc[:half], frame.iloc[half:])):
            rows.to_parquet(lake / f"batch-{step}-{k}.parquet", index=False, row_group_size=600)

    return grow


def _generated_sql_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, index: bool = True
) -> Callable[[int], None]:
    """The generated multiclass table (an id, text labels, bad rows: text in a number column, which SQLite
    stores as given) in a table of a SQLite database, as a forker's own warehouse, with an index on (time, id)
    unless `index` is False."""
    grow_files = _generated_source(tmp_path, monkeypatch)
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    monkeypatch.setenv("MLOPS_SOURCE__KIND", "sql")
    monkeypatch.setenv("MLOPS_SOURCE__URL", url)
    monkeypatch.setenv("MLOPS_SOURCE__TABLE", "orders")
    lake = tmp_path / "lake"

    def grow(step: int) -> None:
        grow_files(step)
        rows = pd.concat([pd.read_parquet(f) for f in sorted(lake.glob(f"batch-{step}-*.parquet"))])
        engine = sa.create_engine(url)
        rows.to_sql("orders", engine, index=False, if_exists="append")
        if index:
            with engine.begin() as conn:
                conn.execute(sa.text('CREATE INDEX IF NOT EXISTS ix_orders ON orders ("Seen at", "Order #")'))
        engine.dispose()

    return grow


def _fraud_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: ExitStack) -> Callable[[int], None]:
    """The fraud warehouse in a throwaway database of the PostgreSQL at 127.0.0.1:5432 (dropped afterwards)."""
    return _fraud_source(tmp_path, monkeypatch, sqlalchemy_url(stack.enter_context(fresh_database("collect"))))


# Each case: its source, and the collection's as_of (None: the source's clock; the warehouse's newest labels
# are still unknown, so the window ends label_delay_days before its newest row).
CASES: dict[str, tuple[Callable[[Path, pytest.MonkeyPatch, ExitStack], Callable[[int], None]], str | None]] = {
    "fraud-sqlite": (lambda t, m, _: _fraud_source(t, m), None),
    "fraud-postgresql": (_fraud_postgresql, None),
    "multiclass-parquet": (lambda t, m, _: _generated_source(t, m), AS_OF),
    "multiclass-sqlite": (lambda t, m, _: _generated_sql_source(t, m), AS_OF),
    "no-timestamp-parquet": (lambda t, m, _: _generated_source(t, m, timestamp=False), AS_OF),
    "no-id-parquet": (lambda t, m, _: _generated_source(t, m, id_column=False), AS_OF),
}


def _outcome(settings: Settings, manifests: list[dict[str, Any]], processed: dict[str, Any]) -> dict[str, Any]:
    """Everything both ways must agree on, with run ids and times left out."""
    data = settings.data_dir
    quarantine = [
        pd.read_parquet(data / m["quarantine_file"]).drop(columns=["_run_id", "_collected_at"])
        for m in manifests
        if m["quarantine_file"]
    ]
    mark_path = data / "state" / "watermark.json"
    mark = json.loads(mark_path.read_text()) if mark_path.exists() else None
    splits_dir = data / "processed" / processed["version"]
    return {
        "files": [m["files"] for m in manifests],
        "rows": [m["rows"] for m in manifests],
        "faults": [(m["fault_counts"], m["column_counts"], m["unknown_categories"]) for m in manifests],
        "watermarks": [(m["watermark_before"], m["watermark_after"]) for m in manifests],
        "quarantine": [q.to_dict("records") for q in quarantine],
        "watermark": None if mark is None else {k: mark[k] for k in ("timestamp", "id", "window_end")},
        "raw": sorted(str(p.relative_to(data / "raw")) for p in (data / "raw").rglob("*.parquet")),
        "splits": {k: processed[k] for k in ("version", "rows", "strategy", "splits", "inputs", "warnings")},
        "split_files": {
            p.relative_to(splits_dir).as_posix(): pd.read_parquet(p) for p in sorted(splits_dir.rglob("*.parquet"))
        },
    }


def _run(settings: Settings, grow: Callable[[int], None], as_of: str | None) -> dict[str, Any]:
    manifests = []
    for step in range(2):
        grow(step)
        manifests.append(run_collection(settings, as_of=as_of, max_bad_share=0.5))
    return _outcome(settings, manifests, build_splits(settings)) | {"executors": [m["executor"] for m in manifests]}


@pytest.mark.usefixtures("state_dir")
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[pytest.mark.postgres] if "postgresql" in c else []) for c in CASES]
)
def test_collect_and_preprocess_on_the_cluster_match_the_local_run(
    case: str,
    dask_cluster: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MLOPS_COLLECTION__CHUNK_ROWS", str(CHUNK_ROWS))
    monkeypatch.setenv("MLOPS_SPLITS__REFERENCE_ROWS", "300")
    outcomes, on_cluster = {}, {}
    with ExitStack() as stack:  # a PostgreSQL case's databases, dropped once every run is read
        # A SQL source is read by collection.readers (2) connections in parts locally; "one-query" reads it whole.
        for where, address in (("one-query", None), ("local", None), ("dask", dask_cluster)):
            folder = tmp_path / where
            folder.mkdir()
            monkeypatch.setenv("MLOPS_DATA_DIR", str(folder / "data"))
            monkeypatch.setenv("MLOPS_COLLECTION__READERS", "1" if where == "one-query" else "2")
            if address:
                monkeypatch.setenv("MLOPS_DASK__ADDRESS", address)
            source, as_of = CASES[case]
            grow = source(folder, monkeypatch, stack)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="core.data.splits"):
                outcomes[where] = _run(get_settings(), grow, as_of)
            on_cluster[where] = (
                "counted on the Dask cluster" in caplog.text and "routed to the splits on the" in caplog.text
            )
    local, remote, one_query = outcomes["local"], outcomes["dask"], outcomes["one-query"]
    # Time splits count each date's keys and route its rows on the cluster; stratified ones (no timestamp) read
    # every row here.
    assert on_cluster == {"one-query": False, "local": False, "dask": local["splits"]["strategy"] == "time"}
    assert local["splits"]["strategy"] == ("stratified" if case == "no-timestamp-parquet" else "time")

    assert local["executors"] == ["local", "local"]
    if case == "no-id-parquet":
        assert all(e.startswith("local: the contract has no id_column") for e in remote["executors"]), remote
    else:
        assert remote["executors"] == [f"dask {dask_cluster}"] * 2
    # Several parts a run, bad rows quarantined, and rows in the second run.
    assert len(local["files"][0]) > 3 and len(local["files"][1]) > 3
    assert all(r["quarantined"] > 0 for r in local["rows"][1:]) and local["rows"][1]["loaded"] > 0
    for rows in local["rows"] + remote["rows"]:
        assert rows["loaded"] + rows["quarantined"] == rows["pulled"], rows

    for key in ("files", "rows", "faults", "watermarks", "quarantine", "watermark", "raw", "splits"):
        assert remote[key] == local[key] == one_query[key], key
    assert local["quarantine"] and all(r["_reason"] for q in local["quarantine"] for r in q)
    assert set(remote["split_files"]) == set(local["split_files"]) == set(one_query["split_files"])
    assert {name.split("/")[0] for name in local["split_files"]} == {
        "train", "validation", "test", "holdout", "reference"
    }  # fmt: skip
    for name, frame in local["split_files"].items():
        pd.testing.assert_frame_equal(remote["split_files"][name], frame, obj=name)
        pd.testing.assert_frame_equal(one_query["split_files"][name], frame, obj=name)


def test_rows_sharing_one_time_and_id_across_a_parts_edge_are_collected_as_locally(
    dask_cluster: str, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query source repeating the last row of the first chunk: the copy is the first row of the next chunk,
    with the same (timestamp, id). Parts are placed by position, so they are the local read's chunks."""
    monkeypatch.setenv("MLOPS_COLLECTION__CHUNK_ROWS", str(CHUNK_ROWS))
    _fraud_source(tmp_path, monkeypatch)(0)
    url = get_settings().warehouse_url
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        ordered = conn.execute(sa.text("SELECT transaction_id FROM transactions ORDER BY event_time, transaction_id"))
        edge = [row[0] for row in ordered][CHUNK_ROWS - 1]
    engine.dispose()
    monkeypatch.setenv("MLOPS_SOURCE__KIND", "sql")
    monkeypatch.setenv("MLOPS_SOURCE__URL", url)
    monkeypatch.setenv(
        "MLOPS_SOURCE__QUERY",
        f"SELECT * FROM transactions UNION ALL SELECT * FROM transactions WHERE transaction_id = '{edge}'",
    )
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path / "local"))
    local = run_collection(get_settings(), max_bad_share=0.5)
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path / "dask"))
    monkeypatch.setenv("MLOPS_DASK__ADDRESS", dask_cluster)
    remote = run_collection(get_settings(), max_bad_share=0.5)
    assert remote["executor"] == f"dask {dask_cluster}"
    assert remote["files"] == local["files"] and remote["rows"] == local["rows"] and len(local["files"]) > 3


def test_a_part_that_reads_other_rows_than_planned_is_refused_before_anything_is_published(
    dask_cluster: str, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source changed between planning and reading (a part planned one row longer than it reads): the
    part's task raises SourceChangedError, the Dask pull leaves no staged file, and pull_and_stage collects in
    this process instead."""
    from dataclasses import replace

    from core.cluster import connect
    from core.data.collection import _cluster_parts, _collect_parts, plan_window
    from core.data.sources import SourceChangedError

    monkeypatch.setenv("MLOPS_COLLECTION__CHUNK_ROWS", str(CHUNK_ROWS))
    _generated_source(tmp_path, monkeypatch)(0)
    monkeypatch.setenv("MLOPS_DASK__ADDRESS", dask_cluster)
    settings = get_settings()
    plan = plan_window(settings, as_of=AS_OF)
    with connect(dask_cluster) as client:
        parts = _cluster_parts(settings, plan, client)
        assert len(parts) > 2
        shifted = [replace(p, rows=p.rows + 1) if p.index == 1 else p for p in parts]
        with pytest.raises(SourceChangedError, match=r"part 1 of the read held 700 rows, planned 701"):
            _collect_parts(settings, plan, shifted, client, dask_cluster)
    assert not (settings.data_dir / "staging" / plan.run_id).exists()


def test_a_sql_table_without_an_index_on_time_and_id_is_collected_in_the_flows_process(
    dask_cluster: str, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated non-fraud table in SQLite with no index: each part's query would scan and sort, so collection
    runs in this process and the manifest says why."""
    monkeypatch.setenv("MLOPS_COLLECTION__CHUNK_ROWS", str(CHUNK_ROWS))
    _generated_sql_source(tmp_path, monkeypatch, index=False)(0)
    monkeypatch.setenv("MLOPS_DASK__ADDRESS", dask_cluster)
    manifest = run_collection(get_settings(), as_of=AS_OF, max_bad_share=0.5)
    assert manifest["executor"].startswith("local: no index on"), manifest["executor"]
    assert manifest["rows"]["loaded"] + manifest["rows"]["quarantined"] == manifest["rows"]["pulled"] > 0


def test_an_unreachable_scheduler_fails_the_run_naming_the_address(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from core.cluster import ClusterUnreachableError
    from core.servers import free_port

    _fraud_source(tmp_path, monkeypatch)(0)
    address = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLOPS_DASK__ADDRESS", address)
    monkeypatch.setenv("MLOPS_DASK__CONNECT_TIMEOUT_S", "3")
    settings = get_settings()
    started = time.monotonic()
    with pytest.raises(ClusterUnreachableError, match=f"dask.address={address} within 3 s"):
        run_collection(settings)
    assert time.monotonic() - started < 30
    assert not (settings.data_dir / "raw").exists() and not (settings.data_dir / "state" / "watermark.json").exists()


@pytest.mark.usefixtures("state_dir")
def test_the_collect_and_preprocess_flows_run_their_work_on_the_cluster(
    dask_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Prefect flows a deployment runs, with dask.address set: collect's tasks send the parts to the
    cluster (its manifest says so), and preprocess builds the splits of every row it loaded."""
    from pipelines.collect import collect
    from pipelines.preprocess import preprocess

    monkeypatch.setenv("MLOPS_COLLECTION__CHUNK_ROWS", str(CHUNK_ROWS))
    monkeypatch.setenv("MLOPS_SPLITS__REFERENCE_ROWS", "300")
    _fraud_source(tmp_path, monkeypatch)(0)
    monkeypatch.setenv("MLOPS_DASK__ADDRESS", dask_cluster)
    manifest = collect(seed_if_empty=False)
    assert manifest["status"] == "succeeded" and manifest["executor"] == f"dask {dask_cluster}", manifest
    rows = manifest["rows"]
    assert rows["pulled"] > 3 * CHUNK_ROWS and rows["loaded"] + rows["quarantined"] == rows["pulled"], rows
    splits = preprocess()["splits"]
    assert sum(splits[name]["rows"] for name in ("train", "validation", "test", "holdout")) == rows["loaded"]
