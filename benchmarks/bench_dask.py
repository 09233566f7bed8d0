"""Benchmark: the same batch-scoring run on a Dask cluster of 1 and of 2 workers (dask.address).

1. N simulated rows (default 20,000,000, the issue's size) are collected into the raw snapshot under
   benchmarks/.work/dask in ``--partitions`` daily partitions of 250,000 rows (not timed:
   collection and preprocessing do not run on Dask yet, see docs/scaling.md; `make bench-data` times them).
2. A model of ``--family`` is fitted, registered in a SQLite MLflow store there and loaded back as the
   score flow loads it.
3. For 1 and then 2 workers: a fresh ``distributed.LocalCluster(n_workers=k, threads_per_worker=1,
   processes=True)``, and core.inference.scoring.score with dask.address pointing at it, every partition
   scored again into its own output directory. Timed: the whole score() call (connecting, sending the
   model to each worker, each worker building its predictor once, one task per partition, the done
   markers). The prediction log and warehouse table are off, as in bench-score.
4. Checks the two runs wrote the same predictions (values, scored_at aside), then writes
   benchmarks/results/dask.json {rows, seconds_1_worker, seconds_2_workers, parallel_efficiency, ...}:
   parallel_efficiency = seconds_1_worker / (2 * seconds_2_workers).

Run: ``make bench-dask`` or ``make bench-dask BENCH_ARGS="--rows 200000"``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_score import prepare, register
from benchmarks.record import write_result

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "dask"
RESULT = ROOT / "benchmarks" / "results" / "dask.json"
FULL_ROWS = 20_000_000  # the size (collect + preprocess + score)
DEFAULT_ROWS = FULL_ROWS
PARTITION_ROWS = 250_000  # collection.chunk_rows: the size of a part file of a real snapshot


def score_on(settings: Any, model: Any, workers: int, out: Path) -> tuple[float, dict[str, Any]]:
    from distributed import LocalCluster

    from core.inference import scoring
    from core.settings import DaskSettings

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = settings.model_copy(
            update={
                "dask": DaskSettings(address=cluster.scheduler_address),
                "scoring": settings.scoring.model_copy(update={"output_dir": out}),
            }
        )
        started = time.perf_counter()
        manifest = scoring.score(on_dask, model=model, rescore=True)
        seconds = time.perf_counter() - started
    if manifest["scored"] + manifest["refused"] != manifest["read"]:
        raise RuntimeError(f"accounting broke with {workers} worker(s): {manifest}")
    return seconds, manifest


def same_predictions(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    files_a = sorted(p.relative_to(a) for p in (a / "predictions").rglob("*.parquet"))
    files_b = sorted(p.relative_to(b) for p in (b / "predictions").rglob("*.parquet"))
    if files_a != files_b:
        return False
    return all(
        pq.read_table(a / f).drop(["scored_at"]).equals(pq.read_table(b / f).drop(["scored_at"])) for f in files_a
    )


def run(rows: int, partitions: int, family: str, keep: bool) -> dict[str, Any]:
    from core.inference import scoring

    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    t0 = time.perf_counter()
    settings = prepare(rows, partitions, WORK)
    prepare_seconds = time.perf_counter() - t0
    version = register(settings, family, sample_rows=min(rows, 200_000))
    model = scoring.load_model(settings)
    load_before = os.getloadavg()[0]
    one, m1 = score_on(settings, model, 1, WORK / "scores-1")
    two, m2 = score_on(settings, model, 2, WORK / "scores-2")
    load_after = os.getloadavg()[0]
    identical = same_predictions(WORK / "scores-1", WORK / "scores-2")
    if m1["read"] != rows or m2["read"] != rows or not identical:
        raise RuntimeError(f"1 and 2 workers disagree: read {m1['read']} / {m2['read']}, identical={identical}")
    result = {
        "rows": rows,
        "reduced": True,  # scoring only, whatever the size, until collection and preprocessing run on Dask
        "note": (
            f"scoring only: {rows:,} rows scored; the target times {FULL_ROWS:,} rows collected, preprocessed "
            "and scored, and collection and preprocessing are not on Dask yet (not timed here)"
        ),
        "seconds_1_worker": round(one, 2),
        "seconds_2_workers": round(two, 2),
        "parallel_efficiency": round(one / (2 * two), 3),
        "target_efficiency": 0.8,
        "rows_per_s_1_worker": round(rows / one),
        "rows_per_s_2_workers": round(rows / two),
        "partitions": m1["partitions_scored"],
        "partition_seconds_1_worker": [p["seconds"] for p in m1["partitions"]],
        "partition_seconds_2_workers": [p["seconds"] for p in m2["partitions"]],
        # Time inside the tasks (summed over partitions): the rest of seconds_k is connecting, sending
        # the model and each worker building its predictor (ONNX conversion and parity check) once.
        "task_seconds_1_worker": round(sum(p["seconds"] for p in m1["partitions"]), 2),
        "task_seconds_2_workers": round(sum(p["seconds"] for p in m2["partitions"]), 2),
        # The machine's 1-minute load average before and after: other work shares its 2 cores.
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "identical_predictions": identical,
        "scored": m1["scored"],
        "refused": m1["refused"],
        "family": family,
        "runtime": model.predictor.runtime,
        "model_version": version,
        "batch_rows": settings.scoring.batch_rows,
        "timed": "score() on the cluster: connect, model sent to and built on each worker, one task per partition",
        "prepare_seconds": round(prepare_seconds, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    if not keep:
        shutil.rmtree(WORK, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help=f"daily raw partitions (Dask tasks); default rows / {PARTITION_ROWS:,}",
    )
    parser.add_argument("--family", default="hist_gradient_boosting", help="the model family scored")
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/.work/dask afterwards")
    parser.add_argument("--out", type=Path, default=RESULT, help=f"default: {RESULT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    print(
        f"REDUCED RUN: {args.rows:,} rows, scoring only (the target is {FULL_ROWS:,} rows collected, "
        "preprocessed and scored; collection and preprocessing are not on Dask yet)"
    )
    partitions = args.partitions or max(8, args.rows // PARTITION_ROWS)
    write_result(run(args.rows, partitions, args.family, args.keep), args.out.resolve())


if __name__ == "__main__":
    main()
