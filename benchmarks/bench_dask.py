"""Benchmark: the same collect + preprocess + score pipeline on a Dask cluster of 1 and of 2 workers (dask.address).

1. N simulated rows (default 20,000,000, the issue's size) are written into a SQLite warehouse under
   benchmarks/.work/dask over ``--days`` days (not timed).
2. For 1 and then 2 workers: a fresh ``distributed.LocalCluster(n_workers=k, threads_per_worker=1,
   processes=True)`` (its start not timed), then with dask.address pointing at it, each into its own data
   directory, timed stage by stage:
   - collect: ``run_collection`` (plan in this process; one task per 250,000-row chunk of the read, each
     worker reading its chunk from the warehouse, checking it and staging its part files; publish);
   - preprocess: ``build_splits`` (time splits; each date's keys counted, then its rows routed and written as the
     splits' pieces, one task per date on the cluster);
   - score: ``core.inference.scoring.score`` (one task per raw partition: connect, the model sent to and built
     on each worker, read, check, predict, write Parquet, done markers).
   Between collect and score of the 1-worker run (not timed) a model of ``--family`` is fitted on the first
   200,000 collected rows and registered in a SQLite MLflow store; both runs score with it. The prediction log
   and warehouse table are off, as in bench-score.
3. Checks both runs collected the same part files (fingerprints), built the same splits version and wrote the
   same predictions (values, scored_at aside), then writes benchmarks/results/dask.json {rows,
   seconds_1_worker, seconds_2_workers, parallel_efficiency, per-stage seconds, ...}:
   seconds_k = collect + preprocess + score with k workers; parallel_efficiency = seconds_1 / (2 * seconds_2).

Run: ``make bench-dask`` or ``make bench-dask BENCH_ARGS="--rows 400000"`` (smaller runs are marked reduced).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_score import AS_OF, _settings, register
from benchmarks.record import write_result

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "dask"
RESULT = ROOT / "benchmarks" / "results" / "dask.json"
FULL_ROWS = 20_000_000  # the size (collect + preprocess + score)
DEFAULT_ROWS = FULL_ROWS
ROWS_PER_DAY = 250_000  # a day of events: one raw partition, one scoring task
STAGES = ("collect", "preprocess", "score")


def pipeline_on(
    settings: Any, workers: int, model: Any | None, family: str
) -> tuple[dict[str, float], dict[str, Any], Any]:
    """Collect, preprocess and score on a fresh cluster of ``workers``; (seconds per stage, manifests, model)."""
    from distributed import LocalCluster

    from core.data.collection import run_collection
    from core.data.splits import build_splits
    from core.inference import scoring
    from core.settings import DaskSettings

    data = WORK / f"data-{workers}"
    seconds: dict[str, float] = {}
    manifests: dict[str, Any] = {}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = settings.model_copy(
            update={
                "data_dir": data,
                "dask": DaskSettings(address=cluster.scheduler_address),
                "scoring": settings.scoring.model_copy(update={"output_dir": data / "scores"}),
            }
        )
        started = time.perf_counter()
        manifests["collect"] = run_collection(on_dask, as_of=AS_OF)
        seconds["collect"] = time.perf_counter() - started
        started = time.perf_counter()
        manifests["preprocess"] = build_splits(on_dask)
        seconds["preprocess"] = time.perf_counter() - started
        if model is None:  # not timed: a model to score with, fitted on this run's snapshot
            register(on_dask, family, sample_rows=200_000)
            model = scoring.load_model(on_dask)
        started = time.perf_counter()
        manifests["score"] = scoring.score(on_dask, model=model, rescore=True)
        seconds["score"] = time.perf_counter() - started
    collected, scored = manifests["collect"], manifests["score"]
    if collected["executor"] != f"dask {cluster.scheduler_address}":
        raise RuntimeError(f"collection did not run on the cluster: {collected['executor']}")
    if collected["rows"]["loaded"] + collected["rows"]["quarantined"] != collected["rows"]["pulled"]:
        raise RuntimeError(f"collection accounting broke with {workers} worker(s): {collected['rows']}")
    if scored["scored"] + scored["refused"] != scored["read"]:
        raise RuntimeError(f"scoring accounting broke with {workers} worker(s): {scored}")
    return seconds, manifests, model


def same_predictions(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    files_a = sorted(p.relative_to(a) for p in (a / "predictions").rglob("*.parquet"))
    files_b = sorted(p.relative_to(b) for p in (b / "predictions").rglob("*.parquet"))
    if files_a != files_b:
        return False
    return all(
        pq.read_table(a / f).drop(["scored_at"]).equals(pq.read_table(b / f).drop(["scored_at"])) for f in files_a
    )


def run(rows: int, days: int, family: str, keep: bool) -> dict[str, Any]:
    from demo.simulator import write_warehouse

    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    t0 = time.perf_counter()
    settings = _settings(WORK)
    write_warehouse(
        settings.warehouse_url, settings.source.table, n_rows=rows, days=days, start="2026-01-01", as_of=AS_OF,
        contract=settings.contract,
    )  # fmt: skip
    prepare_seconds = time.perf_counter() - t0
    load_before = os.getloadavg()[0]
    one, m1, model = pipeline_on(settings, 1, None, family)
    two, m2, _ = pipeline_on(settings, 2, model, family)
    load_after = os.getloadavg()[0]
    same_parts = [f["fingerprint"] for f in m1["collect"]["files"]] == [
        f["fingerprint"] for f in m2["collect"]["files"]
    ]
    same_splits = m1["preprocess"]["version"] == m2["preprocess"]["version"] and (
        m1["preprocess"]["splits"] == m2["preprocess"]["splits"]
    )
    same_scores = same_predictions(WORK / "data-1" / "scores", WORK / "data-2" / "scores")
    pulled = [m["collect"]["rows"]["pulled"] for m in (m1, m2)]
    read = [m["score"]["read"] for m in (m1, m2)]
    if pulled != [rows, rows] or read != [rows, rows] or not (same_parts and same_splits and same_scores):
        raise RuntimeError(
            f"1 and 2 workers disagree: pulled {pulled}, scored {read}, same part files {same_parts}, "
            f"same splits {same_splits}, same predictions {same_scores}"
        )
    total_1, total_2 = sum(one.values()), sum(two.values())
    result: dict[str, Any] = {
        "rows": rows,
        "seconds_1_worker": round(total_1, 2),
        "seconds_2_workers": round(total_2, 2),
        "parallel_efficiency": round(total_1 / (2 * total_2), 3),
        "target_efficiency": 0.8,
        "stage_seconds_1_worker": {k: round(v, 2) for k, v in one.items()},
        "stage_seconds_2_workers": {k: round(v, 2) for k, v in two.items()},
        "stage_efficiency": {k: round(one[k] / (2 * two[k]), 3) for k in STAGES},
        "rows_per_s_1_worker": round(rows / total_1),
        "rows_per_s_2_workers": round(rows / total_2),
        "collect_parts": len(m1["collect"]["files"]),
        "score_partitions": m1["score"]["partitions_scored"],
        "splits_version": m1["preprocess"]["version"],
        # Time inside the scoring tasks (summed over partitions): the rest of the score stage is connecting,
        # sending the model and each worker building its predictor (ONNX conversion and parity check) once.
        "score_task_seconds_1_worker": round(sum(p["seconds"] for p in m1["score"]["partitions"]), 2),
        "score_task_seconds_2_workers": round(sum(p["seconds"] for p in m2["score"]["partitions"]), 2),
        # The machine's 1-minute load average before and after: other work shares its 2 cores.
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "identical": {"part_files": same_parts, "splits": same_splits, "predictions": same_scores},
        "scored": m1["score"]["scored"],
        "refused": m1["score"]["refused"],
        "family": family,
        "runtime": model.predictor.runtime,
        "batch_rows": settings.scoring.batch_rows,
        "chunk_rows": settings.collection.chunk_rows,
        "source": "sqlite warehouse",
        "timed": (
            "per worker count, on a started cluster: run_collection + build_splits + score(); "
            "the model's fit (1-worker run) and the clusters' start are not timed"
        ),
        "prepare_seconds": round(prepare_seconds, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    if rows < FULL_ROWS:
        result["reduced"] = True
        result["note"] = f"{rows:,} rows; the target is {FULL_ROWS:,} rows collected, preprocessed and scored"
    if not keep:
        shutil.rmtree(WORK, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument(
        "--days", type=int, default=None, help=f"days of events (raw partitions); default rows / {ROWS_PER_DAY:,}"
    )
    parser.add_argument("--family", default="hist_gradient_boosting", help="the model family scored")
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/.work/dask afterwards")
    parser.add_argument("--out", type=Path, default=RESULT, help=f"default: {RESULT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.rows < FULL_ROWS:
        print(f"REDUCED RUN: {args.rows:,} rows (the target is {FULL_ROWS:,} collected, preprocessed and scored)")
    days = args.days or max(8, args.rows // ROWS_PER_DAY)
    write_result(run(args.rows, days, args.family, args.keep), args.out.resolve())


if __name__ == "__main__":
    main()
