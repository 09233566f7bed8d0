"""Benchmark: collection + preprocessing of N simulated rows (default 10,000,000).

1. A child process simulates N rows over ``--days`` days into a SQLite warehouse under
   benchmarks/.work/ (not timed; every label already known, so the whole table is one window).
2. This process times collection (chunked read, validation, partitioned snapshots) and preprocessing
   (time-ordered splits, reference sample) together, calling the same core functions the Prefect
   flows' tasks call, and samples the peak RSS of its process tree.
3. Writes benchmarks/results/data.json {rows, seconds, rows_per_s, peak_rss_mb, ...} and prints it.

Run: ``make bench-data`` or ``make bench-data BENCH_ARGS="--rows 1000000"``.
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


def _settings(work: Path) -> Any:
    from core.settings import Settings

    # Every simulated day is split: the benchmark measures all N rows, not the default 28-day window.
    return Settings(state_dir=work, splits={"window_days": None})


def simulate(rows: int, days: int, work: Path) -> dict[str, Any]:
    from demo.simulator import write_warehouse

    settings = _settings(work)
    started = time.perf_counter()
    written = write_warehouse(
        settings.warehouse_url, settings.source.table, n_rows=rows, days=days, start="2026-01-01",
        as_of=AS_OF, contract=settings.contract,
    )  # fmt: skip
    return {"rows": written.rows_written, "seconds": time.perf_counter() - started}


def run(rows: int, days: int, chunk_rows: int | None, keep: bool) -> dict[str, Any]:
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_data", "--simulate-only", "--rows", str(rows), "--days", str(days)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    sim = json.loads(child.stdout.strip().splitlines()[-1])
    sim_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    from core.data.collection import run_collection
    from core.data.splits import build_splits

    settings = _settings(WORK)
    if chunk_rows:
        settings.collection.chunk_rows = chunk_rows
    with PeakRss() as rss:
        t0 = time.perf_counter()
        manifest = run_collection(settings, as_of=AS_OF)
        t1 = time.perf_counter()
        processed = build_splits(settings)
        t2 = time.perf_counter()
    seconds = t2 - t0
    pulled = manifest["rows"]["pulled"]
    if pulled != rows or manifest["rows"]["loaded"] + manifest["rows"]["quarantined"] != pulled:
        raise RuntimeError(f"accounting: simulated {rows}, manifest rows {manifest['rows']}")
    # ru_maxrss is the kernel's high-water mark for this process (KiB on Linux); the sampler adds children.
    self_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb": round(max(self_peak_mb, rss.peak / 2**20), 1),
        "collect_seconds": round(t1 - t0, 2),
        "preprocess_seconds": round(t2 - t1, 2),
        "simulate_seconds": round(sim["seconds"], 2),
        "simulate_peak_rss_mb": round(sim_peak_mb, 1),
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
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--chunk-rows", type=int, default=None, help="default: collection.chunk_rows")
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/.work/data afterwards")
    parser.add_argument("--out", type=Path, default=RESULT, help=f"default: {RESULT.relative_to(ROOT)}")
    parser.add_argument("--simulate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.simulate_only:
        print(json.dumps(simulate(args.rows, args.days, WORK)))
        return
    result = run(args.rows, args.days, args.chunk_rows, args.keep)
    write_result(result, args.out.resolve())


if __name__ == "__main__":
    main()
