"""Collection's Arrow data plane on real sources and real processes.

* A collection killed half-way (SIGKILL, mid-pull) loses nothing: rerun, it gives the same raw part
  files, the same processed version and the same split fingerprints as a run that was never killed.
* Any table, not only the fraud demo: a SQLite table with awkward column names, no id and no timestamp,
  and text where a number belongs (SQLite stores it; ADBC refuses the column, the read goes on through
  SQLite's own driver from that row): every row is loaded or quarantined with a reason, and a second
  run writes no new file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
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
from demo.simulator import write_warehouse

ROOT = Path(__file__).resolve().parents[2]
AS_OF = "2100-01-01"
ROWS = 300_000
CHUNK = 5_000  # many chunks, so that a kill lands mid-pull


def _env(state: Path, warehouse: str) -> dict[str, str]:
    return {
        **os.environ,
        "MLOPS_STATE_DIR": str(state),
        "MLOPS_ENVIRONMENT": "test",
        "MLOPS_WAREHOUSE_URL": warehouse,
        "MLOPS_COLLECTION__CHUNK_ROWS": str(CHUNK),
        "MLOPS_SPLITS__WINDOW_DAYS": "null",
    }


COLLECT = (
    "from core.settings import get_settings; from core.data.collection import run_collection; "
    f"run_collection(get_settings(), as_of={AS_OF!r})"
)


def _collect_and_split(state: Path, warehouse: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    with monkeypatch.context() as m:
        for key, value in _env(state, warehouse).items():
            if key.startswith("MLOPS_"):
                m.setenv(key, value)
        settings = get_settings()
        manifest = run_collection(settings, as_of=AS_OF)
        processed = build_splits(settings)
    raw = sorted(
        p.relative_to(settings.data_dir / "raw").as_posix() for p in (settings.data_dir / "raw").rglob("*.parquet")
    )
    return {"manifest": manifest, "processed": processed, "raw": raw, "settings": settings}


def test_a_collection_killed_half_way_loses_nothing_and_reruns_to_the_same_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = f"sqlite:///{tmp_path / 'warehouse.db'}"
    contract = Settings(state_dir=tmp_path / "sim").contract
    write_warehouse(warehouse, n_rows=ROWS, days=20, start="2026-01-01", as_of=AS_OF, contract=contract)

    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", COLLECT], cwd=ROOT, env=_env(killed, warehouse))
    staging = killed / "data" / "staging"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if staging.exists() and len(list(staging.rglob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL, "the collection finished before it could be killed"
    assert list(staging.rglob("part-*.parquet")), "killed before it staged anything: not half-way"
    assert not (killed / "data" / "state" / "watermark.json").exists()  # the watermark did not move
    assert (
        not list((killed / "data" / "manifests").glob("*.json")) if (killed / "data" / "manifests").exists() else True
    )

    rerun = _collect_and_split(killed, warehouse, monkeypatch)
    clean = _collect_and_split(tmp_path / "clean", warehouse, monkeypatch)

    for run in (rerun, clean):
        rows = run["manifest"]["rows"]
        assert rows["pulled"] == ROWS and rows["loaded"] + rows["quarantined"] == rows["pulled"]
    assert rerun["raw"] == clean["raw"]  # part files are named by their content
    assert rerun["processed"]["version"] == clean["processed"]["version"]
    fingerprints = {n: s["fingerprint"] for n, s in clean["processed"]["splits"].items()}
    assert {n: s["fingerprint"] for n, s in rerun["processed"]["splits"].items()} == fingerprints
    assert rerun["processed"]["rows"] == ROWS
    watermark = json.loads((killed / "data" / "state" / "watermark.json").read_text())
    assert watermark["id"] == json.loads((tmp_path / "clean" / "data" / "state" / "watermark.json").read_text())["id"]


def _awkward_contract(path: Path) -> Path:
    contract = {
        "name": "orders",
        "task": "binary",
        "target": {"name": "returned?", "classes": [False, True], "positive_class": True},
        "columns": [
            {"name": "Body mass (g)", "type": "float", "min": 0, "nullable": True},
            {"name": "2nd island", "type": "category", "categories": ["Biscoe", "Dream", "Torgersen"]},
            {"name": "Île score", "type": "int", "min": 0, "max": 100},
            {"name": "returned?", "type": "bool"},
        ],
    }
    path.write_text(yaml.safe_dump(contract, allow_unicode=True))
    return path


def test_a_table_without_id_or_time_with_mixed_types_is_collected_in_arrow(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(3)
    # ADBC types a column by its first batch (65,536 rows): text there makes the column text; text in a
    # column that batch typed as numbers makes ADBC refuse the read, and SQLite's own driver takes over.
    n = 70_000
    frame = pd.DataFrame(
        {
            "Body mass (g)": rng.normal(4200, 600, n).round(1),
            "2nd island": rng.choice(["Biscoe", "Dream", "Torgersen"], n),
            "Île score": rng.integers(0, 100, n),
            "returned?": rng.random(n) < 0.3,
        }
    )
    frame.loc[5, "Body mass (g)"] = np.nan  # nullable: loaded
    frame.loc[7, "Île score"] = 400  # out of range: quarantined
    frame = pd.concat([frame, frame.iloc[[11]]], ignore_index=True)  # an identical row: kept, two rows
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    engine = sa.create_engine(url)
    try:
        frame.to_sql("orders", engine, index=False, dtype={"Body mass (g)": sa.Float()})
        with engine.begin() as conn:  # text in a REAL column early, in an INTEGER column late
            conn.execute(sa.text("UPDATE orders SET \"Body mass (g)\" = 'N/A' WHERE rowid = 25000"))
            conn.execute(sa.text("UPDATE orders SET \"Île score\" = 'many' WHERE rowid = 68000"))
    finally:
        engine.dispose()
    monkeypatch.setenv("MLOPS_CONFIG", str(ROOT / "configs" / "settings.yaml"))  # the generic defaults only
    monkeypatch.setenv("MLOPS_SPLITS__WINDOW_DAYS", "null")
    monkeypatch.setenv("MLOPS_CONTRACT_PATH", str(_awkward_contract(tmp_path / "orders.yaml")))
    monkeypatch.setenv("MLOPS_SOURCE__KIND", "sql")
    monkeypatch.setenv("MLOPS_SOURCE__URL", url)
    monkeypatch.setenv("MLOPS_SOURCE__TABLE", "orders")
    monkeypatch.setenv("MLOPS_COLLECTION__CHUNK_ROWS", "7000")
    settings = get_settings()
    assert settings.contract.id_column is None and settings.contract.timestamp_column is None

    with caplog.at_level(logging.INFO, logger="core.data.sources"):
        first = run_collection(settings)
    assert "reading on from row 63000 through SQLite's driver" in caplog.text  # the second batch's text
    rows = first["rows"]
    assert rows == {"pulled": n + 1, "loaded": n - 2, "quarantined": 3}
    quarantined = pd.read_parquet(settings.data_dir / first["quarantine_file"])
    reasons = sorted(quarantined["_reason"])
    assert reasons == [
        "Body mass (g): wrong type 'N/A'",
        "Île score: 400 above max 100",
        "Île score: wrong type 'many'",
    ]
    loaded = pd.concat(pd.read_parquet(settings.data_dir / "raw" / f["path"]) for f in first["files"])
    assert len(loaded) == n - 2 and loaded["_row_key"].is_unique
    assert loaded["Body mass (g)"].isna().sum() == 1

    second = run_collection(settings)
    assert second["rows"] == rows
    assert sum(f["new"] for f in second["files"]) == 0  # the same rows: the same files, none new
    processed = build_splits(settings)
    assert processed["rows"] == n - 2  # copies of the full snapshot dropped by key


def test_a_sql_source_that_changes_while_it_is_read_in_parts_is_read_again_by_one_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two connections read the window in parts placed by each day's row count (collection.readers, 2); a day
    that holds another number of rows when its part is read (here: one day's count is made one too many, what a
    row deleted between counting and reading gives) makes the run read the window again by one query: the same
    snapshot as a run that read it by one query from the start, and a warning that says why."""
    from core.data.sources import SqlSource

    warehouse = f"sqlite:///{tmp_path / 'warehouse.db'}"
    contract = Settings(state_dir=tmp_path / "sim").contract
    write_warehouse(warehouse, n_rows=30_000, days=6, start="2026-01-01", as_of=AS_OF, contract=contract)
    with monkeypatch.context() as m:
        m.setenv("MLOPS_COLLECTION__READERS", "1")
        one_query = _collect_and_split(tmp_path / "one-query", warehouse, monkeypatch)

    counted = SqlSource.count
    calls = []

    def one_too_many(self: SqlSource, window: Any, time_range: Any) -> int:  # the third day's count
        calls.append(time_range)
        return counted(self, window, time_range) + (time_range.start == datetime(2026, 1, 3))

    monkeypatch.setattr(SqlSource, "count", one_too_many)
    with caplog.at_level(logging.WARNING, logger="core.data.collection"):
        changed = _collect_and_split(tmp_path / "changed", warehouse, monkeypatch)
    assert len(calls) >= 6, "the window was not read in parts"
    assert "the source changed while it was read" in caplog.text and "read again by one query" in caplog.text
    assert changed["raw"] == one_query["raw"]
    assert changed["manifest"]["rows"] == one_query["manifest"]["rows"]
    assert changed["processed"]["version"] == one_query["processed"]["version"]
    assert changed["processed"]["splits"] == one_query["processed"]["splits"]
