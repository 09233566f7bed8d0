"""The collect and preprocess flows against real stores: SQLite, PostgreSQL, CSV and Parquet files.

The flows run for real against the test run's Prefect server (tests/conftest.py); the bad-input cases call
core.data.collection.run_collection, the very function chain the flow's tasks call, to stay fast.
Every run checks the accounting: loaded + quarantined == pulled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from core.data.collection import CollectionError, run_collection
from core.data.datasets import latest_processed
from core.data.splits import SPLITS
from core.settings import Settings, get_settings
from demo.simulator import simulate, write_warehouse

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def env(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A fresh state dir; each test sets its source through the environment, as a user would."""
    monkeypatch.setenv("MLOPS_SPLITS__REFERENCE_ROWS", "300")
    yield monkeypatch


def use(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(f"MLOPS_{key.upper()}", value)
    return get_settings()


def raw_rows(settings: Settings) -> pd.DataFrame:
    files = sorted((settings.data_dir / "raw").glob("date=*/part-*.parquet"))
    if not files:
        return pd.DataFrame(columns=settings.contract.column_names)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def raw_files(settings: Settings) -> set[Path]:
    return set((settings.data_dir / "raw").glob("date=*/part-*.parquet"))


def watermark(settings: Settings) -> dict[str, Any] | None:
    path = settings.data_dir / "state" / "watermark.json"
    return json.loads(path.read_text()) if path.exists() else None


def manifests(settings: Settings) -> list[dict[str, Any]]:
    paths = sorted((settings.data_dir / "manifests").glob("collect-*.json"), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text()) for p in paths]


def accounted(manifest: dict[str, Any]) -> None:
    rows = manifest["rows"]
    assert rows["loaded"] + rows["quarantined"] == rows["pulled"], rows


def warehouse_rows(url: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        return pd.read_sql(
            "SELECT transaction_id, event_time, is_fraud FROM transactions", engine, parse_dates=["event_time"]
        )
    finally:
        engine.dispose()


def matured(url: str, delay_days: float = 3.0) -> pd.DataFrame:
    rows = warehouse_rows(url)
    return rows[rows["event_time"] <= rows["event_time"].max() - pd.Timedelta(days=delay_days)]


# ---- the flows, end to end ------------------------------------------------------------------------
def test_flows_collect_incrementally_and_preprocess(
    prefect_server: str, env: pytest.MonkeyPatch, warehouse_url: str
) -> None:
    from pipelines.collect import collect
    from pipelines.preprocess import preprocess

    settings = use(env, warehouse_url=warehouse_url)
    write_warehouse(warehouse_url, days=10, rows_per_day=400, contract=settings.contract)

    first = collect(seed_if_empty=False)
    assert first["status"] == "succeeded"
    accounted(first)
    expected = matured(warehouse_url)
    # The window ends label_delay_days before the source's newest row: ~7 of 10 days.
    assert first["rows"]["pulled"] == len(expected) and 2_700 < len(expected) <= 2_800
    assert first["rows"]["quarantined"] == 0
    loaded = raw_rows(settings)
    assert sorted(loaded["transaction_id"]) == sorted(expected["transaction_id"])
    mark = watermark(settings)
    assert (
        mark is not None
        and mark["id"] == expected.sort_values(["event_time", "transaction_id"])["transaction_id"].iloc[-1]
    )

    # Re-running is idempotent: nothing new, no new files, the watermark stays.
    files = raw_files(settings)
    again = collect(seed_if_empty=False)
    assert again["status"] == "empty" and again["rows"]["pulled"] == 0
    assert raw_files(settings) == files and watermark(settings) == mark

    # Four more days arrive; earlier labels mature (back-filled in the warehouse); only new rows come.
    write_warehouse(warehouse_url, days=4, rows_per_day=400, contract=settings.contract)
    third = collect(seed_if_empty=False)
    accounted(third)
    assert third["rows"]["pulled"] == len(matured(warehouse_url)) - len(expected)  # only rows past the watermark
    loaded = raw_rows(settings)
    assert loaded["transaction_id"].is_unique
    assert sorted(loaded["transaction_id"]) == sorted(matured(warehouse_url)["transaction_id"])
    assert loaded["is_fraud"].notna().all()

    processed = preprocess()
    assert processed["rows"] == len(loaded) and processed["reused"] is False
    ds = latest_processed(settings)
    assert sum(len(ds.load(s)) for s in SPLITS) == len(loaded)
    assert ds.load("holdout")["event_time"].min() >= ds.load("train")["event_time"].max()
    assert preprocess()["reused"] is True


def test_a_refused_batch_fails_the_flow_without_moving_the_watermark(
    prefect_server: str, env: pytest.MonkeyPatch, warehouse_url: str
) -> None:
    from pipelines.collect import collect

    settings = use(env, warehouse_url=warehouse_url)
    write_warehouse(warehouse_url, days=6, rows_per_day=300, contract=settings.contract)
    clean = collect(seed_if_empty=False)
    accounted(clean)
    before, files = watermark(settings), raw_files(settings)

    # ~9% of data_quality rows are faulty; the window also holds 3 clean days: ~7% in all, above 5%.
    write_warehouse(warehouse_url, days=14, rows_per_day=300, scenario="data_quality", contract=settings.contract)
    started = time.monotonic()
    with pytest.raises(CollectionError) as err:
        collect(seed_if_empty=False)
    # Retries would add 1 + 2 + 5 s of delays: a refused batch fails at once.
    assert time.monotonic() - started < 7.5, "a refused batch must not be retried"
    message = str(err.value)
    assert "above max_bad_share 5.0%" in message
    assert "channel null" in message and "amount out of range" in message
    assert ("amount wrong type" in message) == warehouse_url.startswith("sqlite")  # PostgreSQL refuses 'N/A'
    assert watermark(settings) == before and raw_files(settings) == files

    failed = manifests(settings)[-1]
    assert failed["status"] == "failed" and failed["error"] == message
    accounted(failed)
    quarantine = pd.read_parquet(settings.data_dir / failed["quarantine_file"])
    assert len(quarantine) == failed["rows"]["quarantined"] > 0
    assert quarantine["_reason"].notna().all() and (quarantine["_run_id"] == failed["run_id"]).all()
    assert sum(failed["fault_counts"].values()) >= failed["rows"]["quarantined"]

    # A higher threshold takes the same window: valid rows loaded, bad rows quarantined, none lost.
    passed = collect(seed_if_empty=False, max_bad_share=0.5)
    assert passed["status"] == "succeeded"
    accounted(passed)
    assert passed["rows"]["pulled"] == failed["rows"]["pulled"]
    assert len(raw_rows(settings)) == clean["rows"]["loaded"] + passed["rows"]["loaded"]
    assert watermark(settings) != before


def test_io_faults_are_retried_refusals_are_not() -> None:
    from prefect.states import Failed

    from pipelines.collect import _retry_unless_refused

    def retried(exc: BaseException) -> bool:
        return _retry_unless_refused(None, None, Failed(data=exc))  # type: ignore[arg-type]

    assert retried(OSError("database is locked"))
    assert not retried(CollectionError("12 of 100 rows failed validation"))


# ---- bad input, through a CSV source ------------------------------------------------------------
def write_csv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


@pytest.fixture
def batch() -> pd.DataFrame:
    frame = simulate(days=1, rows_per_day=100, as_of="2026-02-01")
    return frame.astype({"amount": object, "channel": object})


def csv_settings(env: pytest.MonkeyPatch, tmp_path: Path, frame: pd.DataFrame) -> Settings:
    write_csv(tmp_path / "in" / "batch.csv", frame)
    return use(env, source__kind="csv", source__path=str(tmp_path / "in" / "*.csv"))


AS_OF = "2026-12-31"  # after every simulated label has matured


def test_wrong_types_under_the_threshold_are_quarantined_and_the_rest_loaded(
    env: pytest.MonkeyPatch, tmp_path: Path, batch: pd.DataFrame
) -> None:
    batch.loc[[5, 6, 7], "amount"] = "abc"
    settings = csv_settings(env, tmp_path, batch)
    manifest = run_collection(settings, as_of=AS_OF)
    assert manifest["status"] == "succeeded"
    assert manifest["rows"] == {"pulled": 100, "loaded": 97, "quarantined": 3}
    assert manifest["fault_counts"] == {"amount wrong type": 3}
    quarantine = pd.read_parquet(settings.data_dir / manifest["quarantine_file"])
    assert set(quarantine["_reason"]) == {"amount: wrong type 'abc'"} and set(quarantine["amount"]) == {"abc"}
    assert len(raw_rows(settings)) == 97


def test_nulls_in_a_non_null_column_above_the_threshold_fail_naming_column_and_count(
    env: pytest.MonkeyPatch, tmp_path: Path, batch: pd.DataFrame
) -> None:
    batch.loc[:9, "channel"] = None
    settings = csv_settings(env, tmp_path, batch)
    with pytest.raises(CollectionError, match=r"10 of 100 rows \(10\.0%\) failed validation.*channel null: 10"):
        run_collection(settings, as_of=AS_OF)
    (failed,) = manifests(settings)
    accounted(failed)
    assert failed["rows"] == {"pulled": 100, "loaded": 90, "quarantined": 10}
    assert watermark(settings) is None and not raw_files(settings)
    quarantine = pd.read_parquet(settings.data_dir / failed["quarantine_file"])
    assert (quarantine["_reason"] == "channel: null in non-nullable column").all() and len(quarantine) == 10


def test_an_unknown_category_is_quarantined_or_flagged_as_the_contract_says(
    env: pytest.MonkeyPatch, tmp_path: Path, batch: pd.DataFrame
) -> None:
    batch.loc[[1, 2], "channel"] = "teleport"  # channel: a closed list
    batch.loc[[3, 4, 5], "merchant_category"] = "crypto"  # merchant_category: allow_unknown
    settings = csv_settings(env, tmp_path, batch)
    manifest = run_collection(settings, as_of=AS_OF)
    accounted(manifest)
    assert manifest["rows"]["quarantined"] == 2 and manifest["fault_counts"] == {"channel unknown category": 2}
    assert manifest["unknown_categories"] == {"merchant_category": {"crypto": 3}}
    assert (raw_rows(settings)["merchant_category"] == "crypto").sum() == 3


def test_an_empty_batch_succeeds_and_leaves_the_watermark(
    env: pytest.MonkeyPatch, tmp_path: Path, batch: pd.DataFrame
) -> None:
    settings = csv_settings(env, tmp_path, batch.iloc[0:0])
    manifest = run_collection(settings, as_of=AS_OF)
    assert manifest["status"] == "empty" and manifest["rows"] == {"pulled": 0, "loaded": 0, "quarantined": 0}
    assert watermark(settings) is None and not raw_files(settings)


def test_a_missing_column_fails_before_reading_rows(
    env: pytest.MonkeyPatch, tmp_path: Path, batch: pd.DataFrame
) -> None:
    settings = csv_settings(env, tmp_path, batch.drop(columns=["channel"]).assign(colour="red"))
    with pytest.raises(CollectionError, match=r"lacks contract column\(s\) \['channel'\].*colour"):
        run_collection(settings, as_of=AS_OF)
    (failed,) = manifests(settings)
    assert failed["status"] == "failed" and failed["rows"] == {"pulled": 0, "loaded": 0, "quarantined": 0}
    assert watermark(settings) is None and not raw_files(settings)


# ---- other sources and idempotent snapshots --------------------------------------------------------
def test_parquet_files_and_a_sql_query_are_sources_too(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    frame = simulate(days=3, rows_per_day=200, as_of="2026-02-01")
    (tmp_path / "lake").mkdir()
    frame.iloc[:300].to_parquet(tmp_path / "lake" / "a.parquet")
    frame.iloc[300:].to_parquet(tmp_path / "lake" / "b.parquet")
    settings = use(env, source__kind="parquet", source__path=str(tmp_path / "lake"))
    manifest = run_collection(settings, as_of=AS_OF)
    assert manifest["rows"] == {"pulled": 600, "loaded": 600, "quarantined": 0}

    url = f"sqlite:///{tmp_path / 'ops.db'}"
    write_warehouse(url, days=3, rows_per_day=200, as_of="2026-02-01", contract=settings.contract)
    settings = use(
        env,
        data_dir=str(tmp_path / "data2"),
        source__kind="sql",
        source__url=url,
        source__query="SELECT * FROM transactions WHERE channel = 'online'",
    )
    manifest = run_collection(settings, as_of=AS_OF)
    accounted(manifest)
    assert manifest["rows"]["pulled"] == (frame["channel"] == "online").sum()
    assert set(raw_rows(settings)["channel"]) == {"online"}


def test_collecting_the_same_rows_again_writes_no_new_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wh.db'}"
    settings = use(env, warehouse_url=url)
    write_warehouse(url, days=5, rows_per_day=300, contract=settings.contract)
    first = run_collection(settings)
    files = {p: p.stat().st_mtime_ns for p in raw_files(settings)}
    (settings.data_dir / "state" / "watermark.json").unlink()  # forget the watermark: the same window again
    second = run_collection(settings)
    assert second["rows"] == first["rows"]
    assert [f["new"] for f in second["files"]] == [False] * len(first["files"])
    assert {p: p.stat().st_mtime_ns for p in raw_files(settings)} == files
    fingerprints = {f["fingerprint"] for f in first["files"]}
    assert {f["fingerprint"] for f in second["files"]} == fingerprints
    for part in first["files"]:
        assert pq.read_metadata(settings.data_dir / "raw" / part["path"]).num_rows == part["rows"]
