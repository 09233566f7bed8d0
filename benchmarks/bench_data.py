"""Benchmark: collection + preprocessing of N simulated rows (default 10,000,000).

1. A child process simulates N rows into a SQLite warehouse under benchmarks/.work/ (timed apart, as
   simulate_rows_per_s; every label already known, so the whole table is one window). The rows are
   spread over ``--days`` days, by default as many days as keep 166,667 rows a day (10M rows: 60 days),
   so a day partition, and with it the memory, stays the same size at 100M rows.
2. A plain single-threaded ADBC scan of the same table (raw_read_rows_per_s): the reader's ceiling.
3. This process times collection (Arrow reads, the contract's checker, partitioned snapshots) and
   preprocessing (time-ordered splits, reference sample) together, calling the same core functions the
   Prefect flows' tasks call, and samples the peak RSS of its process tree.
4. The same rows exported to Parquet files (not timed) are collected and preprocessed again from a
   Parquet source (parquet_source_rows_per_s).
5. Kill safety: the same collection in a child process, SIGKILLed half-way through its pull, then run
   again: kill_rerun.same_version_and_split_fingerprints says whether it gave the timed run's snapshot.
6. Writes benchmarks/results/data.json {rows, seconds, rows_per_s, peak_rss_mb, raw_read_rows_per_s,
   parquet_source_rows_per_s, ...} and prints it.

Run: ``make bench-data`` (10M rows), ``make bench-data BENCH_ARGS="--rows 1000000"`` (quick), or
``make bench-data BENCH_ARGS="--rows 100000000"`` (about 35 GB of disk under
benchmarks/.work: SQLite 21 GB, the Parquet copies the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.record import write_result

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "data"
RESULT = ROOT / "benchmarks" / "results" / "data.json"
AS_OF = "2100-01-01"  # far after the simulated period: every label is final, every row is collectable
ROWS_PER_DAY = 166_667  # 10M rows over 60 days


class PeakRss:
    """Samples the resident memory of this process and its children every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return int(total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def _settings(work: Path, source: dict[str, Any] | None = None) -> Any:
    from core.settings import Settings

    # Every simulated day is split: the benchmark measures all N rows, not the default 28-day window.
    if source is None:
        return Settings(state_dir=work, splits={"window_days": None})
    return Settings(state_dir=work, splits={"window_days": None}, source=source)


def simulate(rows: int, days: int, work: Path) -> dict[str, Any]:
    from demo.simulator import write_warehouse

    settings = _settings(work)
    started = time.perf_counter()
    written = write_warehouse(
        settings.warehouse_url, settings.source.table, n_rows=rows, days=days, start="2026-01-01",
        as_of=AS_OF, contract=settings.contract,
    )  # fmt: skip
    return {"rows": written.rows_written, "seconds": time.perf_counter() - started}


def raw_scan(settings: Any) -> tuple[int, float]:
    """(rows, seconds) of a plain single-threaded ADBC scan of the warehouse table, every batch fetched."""
    import adbc_driver_sqlite.dbapi as adbc_sqlite

    from core.databases import sqlite_path

    started = time.perf_counter()
    rows = 0
    with adbc_sqlite.connect(str(sqlite_path(settings.warehouse_url))) as conn, conn.cursor() as cur:
        cur.execute(f'SELECT * FROM "{settings.source.table}"')
        for batch in cur.fetch_record_batch():
            rows += batch.num_rows
    return rows, time.perf_counter() - started


def export_parquet(settings: Any, folder: Path, rows_per_file: int = 1_000_000) -> int:
    """The warehouse table as Parquet files (timestamps typed, as a Parquet source holds them); not timed."""
    import adbc_driver_sqlite.dbapi as adbc_sqlite
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.databases import sqlite_path

    folder.mkdir(parents=True, exist_ok=True)
    ts = settings.contract.timestamp_column
    files, written, writer = 0, 0, None
    with adbc_sqlite.connect(str(sqlite_path(settings.warehouse_url))) as conn, conn.cursor() as cur:
        cur.execute(f'SELECT * FROM "{settings.source.table}"')
        for batch in cur.fetch_record_batch():
            table = pa.Table.from_batches([batch])
            if ts is not None:
                i = table.schema.get_field_index(ts)
                table = table.set_column(i, ts, table.column(ts).cast(pa.timestamp("us")))
            if writer is None or written >= rows_per_file:
                if writer is not None:
                    writer.close()
                writer = pq.ParquetWriter(folder / f"part-{files:05d}.parquet", table.schema, compression="zstd")
                files, written = files + 1, 0
            writer.write_table(table)
            written += table.num_rows
    if writer is not None:
        writer.close()
    return files


def collect_and_preprocess(settings: Any) -> dict[str, Any]:
    from core.data.collection import run_collection
    from core.data.splits import build_splits

    t0, c0 = time.perf_counter(), time.process_time()
    manifest = run_collection(settings, as_of=AS_OF)
    t1 = time.perf_counter()
    processed = build_splits(settings)
    t2, c2 = time.perf_counter(), time.process_time()
    # CPU seconds of every thread of this process: on a shared machine, the cost that wall time hides.
    return {"manifest": manifest, "processed": processed, "collect": t1 - t0, "preprocess": t2 - t1, "cpu": c2 - c0}


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def killed_and_rerun(settings: Any, files: int) -> dict[str, Any]:
    """A collection of the same warehouse in a child process, SIGKILLed once it has staged half of the
    ``files`` part files an uninterrupted run writes, then run again here: its processed version and
    split fingerprints."""
    state = WORK / "killed"
    env = {
        **os.environ,
        "MLOPS_STATE_DIR": str(state),
        "MLOPS_WAREHOUSE_URL": settings.warehouse_url,
        "MLOPS_SPLITS__WINDOW_DAYS": "null",
        "MLOPS_COLLECTION__CHUNK_ROWS": str(settings.collection.chunk_rows),
    }
    code = (
        "from core.settings import get_settings; from core.data.collection import run_collection; "
        f"run_collection(get_settings(), as_of={AS_OF!r})"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    staging = state / "data" / "staging"
    deadline = time.monotonic() + 3600
    while child.poll() is None and time.monotonic() < deadline:
        if len(list(staging.rglob("part-*.parquet"))) >= max(1, files // 2):
            break
        time.sleep(0.01)
    child.kill()
    child.wait()
    staged = len(list(staging.rglob("part-*.parquet")))
    killed = child.returncode == -9 and not list((state / "data").glob("manifests/*.json"))
    from core.settings import Settings

    rerun = Settings(state_dir=state, warehouse_url=settings.warehouse_url, splits={"window_days": None})
    rerun.collection.chunk_rows = settings.collection.chunk_rows
    timed = collect_and_preprocess(rerun)
    return {"killed_mid_run": killed, "files_staged_when_killed": staged, "processed": timed["processed"]}


def run(rows: int, days: int | None, chunk_rows: int | None, keep: bool) -> dict[str, Any]:
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    days = days or max(1, -(-rows // ROWS_PER_DAY))
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_data", "--simulate-only", "--rows", str(rows), "--days", str(days)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    sim = json.loads(child.stdout.strip().splitlines()[-1])
    sim_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    settings = _settings(WORK)
    if chunk_rows:
        settings.collection.chunk_rows = chunk_rows
    scanned, scan_seconds = raw_scan(settings)
    with PeakRss() as rss:
        timed = collect_and_preprocess(settings)
    manifest, processed = timed["manifest"], timed["processed"]
    seconds = timed["collect"] + timed["preprocess"]
    pulled = manifest["rows"]["pulled"]
    if pulled != rows or scanned != rows or manifest["rows"]["loaded"] + manifest["rows"]["quarantined"] != pulled:
        raise RuntimeError(f"accounting: simulated {rows}, scanned {scanned}, manifest rows {manifest['rows']}")
    # ru_maxrss is the kernel's high-water mark for this process (KiB on Linux); the sampler adds children.
    self_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_mb = max(self_peak_mb, rss.peak / 2**20)
    # The same rows from Parquet files, into a state directory of their own.
    source_dir = WORK / "parquet-source"
    export_parquet(settings, source_dir)
    parquet_settings = _settings(WORK / "from-parquet", {"kind": "parquet", "path": str(source_dir)})
    parquet_settings.collection.chunk_rows = settings.collection.chunk_rows
    with PeakRss() as parquet_rss:
        from_parquet = collect_and_preprocess(parquet_settings)
    if from_parquet["manifest"]["rows"]["pulled"] != rows:
        raise RuntimeError(f"accounting: parquet source pulled {from_parquet['manifest']['rows']}")
    if from_parquet["processed"]["rows"] != processed["rows"]:
        raise RuntimeError("the parquet source gave other splits than the warehouse")
    parquet_seconds = from_parquet["collect"] + from_parquet["preprocess"]
    # Kill safety: killed half-way through its pull, then rerun, the same snapshot as the timed run.
    kill = killed_and_rerun(settings, files=len(manifest["files"]))
    fingerprints = {n: s["fingerprint"] for n, s in processed["splits"].items()}
    same_snapshot = kill["processed"]["version"] == processed["version"] and fingerprints == {
        n: s["fingerprint"] for n, s in kill["processed"]["splits"].items()
    }
    result = {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb": round(max(peak_mb, parquet_rss.peak / 2**20), 1),
        "raw_read_rows_per_s": round(scanned / scan_seconds),
        "parquet_source_rows_per_s": round(rows / parquet_seconds),
        "cpu_seconds": round(timed["cpu"], 2),
        "cpu_us_per_row": round(timed["cpu"] / rows * 1e6, 2),
        "collect_seconds": round(timed["collect"], 2),
        "preprocess_seconds": round(timed["preprocess"], 2),
        "parquet_source_seconds": round(parquet_seconds, 2),
        "simulate_seconds": round(sim["seconds"], 2),
        "simulate_rows_per_s": round(rows / sim["seconds"]),
        "simulate_peak_rss_mb": round(sim_peak_mb, 1),
        "days": days,
        "kill_rerun": {
            "killed_mid_run": kill["killed_mid_run"],
            "files_staged_when_killed": kill["files_staged_when_killed"],
            "files_of_a_whole_run": len(manifest["files"]),
            "same_version_and_split_fingerprints": same_snapshot,
            "version": processed["version"],
        },
        # Bytes a row takes at rest, for the sizing in docs/scaling.md: the source table (SQLite), the
        # Parquet export of it (zstd), and the data directory (raw snapshot, processed splits, manifests).
        "bytes_per_row": {
            "warehouse_sqlite": round(_size(Path(str(settings.warehouse_url).removeprefix("sqlite:///"))) / rows, 1),
            "parquet_source_zstd": round(_size(source_dir) / rows, 1),
            "data_dir": round(_size(settings.data_dir) / rows, 1),
        },
        "rows_loaded": manifest["rows"]["loaded"],
        "rows_quarantined": manifest["rows"]["quarantined"],
        "raw_files": len(manifest["files"]),
        "chunk_rows": settings.collection.chunk_rows,
        "splits": {name: split["rows"] for name, split in processed["splits"].items()},
        "warehouse": "sqlite (benchmarks/.work)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    if not keep:
        shutil.rmtree(WORK, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=None, help=f"default: rows / {ROWS_PER_DAY:,} (a day's size fixed)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="default: collection.chunk_rows")
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/.work/data afterwards")
    parser.add_argument("--out", type=Path, default=RESULT, help=f"default: {RESULT.relative_to(ROOT)}")
    parser.add_argument("--simulate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.simulate_only:
        print(json.dumps(simulate(args.rows, args.days or max(1, -(-args.rows // ROWS_PER_DAY)), WORK)))
        return
    result = run(args.rows, args.days, args.chunk_rows, args.keep)
    write_result(result, args.out.resolve())


if __name__ == "__main__":
    main()
