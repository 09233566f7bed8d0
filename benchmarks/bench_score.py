"""Benchmark: batch scoring of N rows end to end (default 10,000,000) against the in-process predict rate.

1. N simulated rows (the demo's simulator) are collected into the raw snapshot under
   benchmarks/.work/score (not timed: `make bench-data` measures that), 166,667 rows a day as there.
2. A model of ``--family`` is fitted on a sample of them, logged and registered in a SQLite MLflow store
   there, and loaded back from the registry as the flow loads it (timed apart: model_load_seconds).
3. In-process predict rate: the loaded predictor on column arrays already in memory (the first
   partitions' rows, ``scoring.batch_rows`` at a time): the ceiling scoring cannot beat.
4. Scoring, timed: every raw partition read, checked by the contract's checker, predicted and written
   as Parquet (core.inference.scoring.score, what the `score` flow runs). The prediction log and the
   warehouse table are off: this measures read, predict, write; the log's own rate is bench-serving's.
   Peak RSS of the process is sampled throughout.
5. Writes benchmarks/results/score.json {rows, rows_per_s, inprocess_rows_per_s, peak_rss_mb, ...}. The
   target: rows_per_s at least half of inprocess_rows_per_s (meets_target).

Run: ``make bench-score`` (10M rows) or ``make bench-score BENCH_ARGS="--rows 500000"`` (reduced: said
in the output).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_data import ROWS_PER_DAY, PeakRss
from benchmarks.record import write_result

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "score"
RESULT = ROOT / "benchmarks" / "results" / "score.json"
FULL_ROWS = 10_000_000
AS_OF = "2100-01-01"  # every simulated label final: every row collectable


def _settings(work: Path) -> Any:
    from core.settings import Settings

    return Settings(
        state_dir=work,
        mlflow_tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
        scoring={"log_predictions": False, "warehouse_table": None},
    )


def prepare(rows: int, days: int, work: Path) -> Any:
    from core.data.collection import run_collection
    from demo.simulator import write_warehouse

    settings = _settings(work)
    write_warehouse(
        settings.warehouse_url, settings.source.table, n_rows=rows, days=days, start="2026-01-01", as_of=AS_OF,
        contract=settings.contract,
    )  # fmt: skip
    manifest = run_collection(settings, as_of=AS_OF)
    if manifest["rows"]["pulled"] != rows:
        raise RuntimeError(f"collected {manifest['rows']} of {rows} rows")
    return settings


def register(settings: Any, family: str, sample_rows: int) -> str:
    import mlflow
    import pandas as pd
    import pyarrow.parquet as pq

    from core.data.snapshots import raw_part_files
    from core.modeling.families import build_pipeline
    from core.modeling.features import to_model_input
    from core.registry.artefact import log_model, metadata_for

    contract = settings.contract
    frames, have = [], 0
    for path in raw_part_files(settings.data_dir / "raw"):
        frames.append(pq.read_table(path).to_pandas())
        have += len(frames[-1])
        if have >= sample_rows:
            break
    data = pd.concat(frames, ignore_index=True).head(sample_rows)
    X = to_model_input(data.drop(columns=[contract.target.name]), contract)
    pipeline = build_pipeline(contract, family, seed=0).fit(X, data[contract.target.name])
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("bench-score")
    threshold = 0.5 if contract.task == "binary" else None
    with mlflow.start_run(experiment_id=experiment_id):
        metadata = metadata_for(pipeline, contract, family=family, threshold=threshold, primary_metric=None)
        uri = log_model(pipeline, metadata, X.head(3))
    version = str(mlflow.register_model(uri, settings.model_name).version)
    client.set_registered_model_alias(settings.model_name, settings.scoring.model_alias, version)
    return version


def inprocess_rate(settings: Any, model: Any, rows: int) -> tuple[int, float]:
    """(rows, seconds) of the predictor alone on column arrays already in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.data.rules import ContractChecker
    from core.data.snapshots import raw_part_files
    from core.inference.predictor import columns_from_typed

    contract = settings.contract
    tables, have = [], 0
    for path in raw_part_files(settings.data_dir / "raw"):
        tables.append(pq.read_table(path))
        have += tables[-1].num_rows
        if have >= rows:
            break
    table = pa.concat_tables(tables).slice(0, rows)
    checked = ContractChecker(contract, contract.input_columns).check(table)
    size = settings.scoring.batch_rows
    batches = [
        columns_from_typed({k: v.slice(i, size) for k, v in checked.typed.items()}, contract)
        for i in range(0, table.num_rows, size)
    ]
    model.predictor.predict(batches[0])  # warm
    started = time.perf_counter()
    for columns in batches:
        model.predictor.predict(columns)
    return table.num_rows, time.perf_counter() - started


def run(rows: int, family: str, keep: bool) -> dict[str, Any]:
    from core.inference import scoring

    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    days = max(1, -(-rows // ROWS_PER_DAY))
    t0 = time.perf_counter()
    settings = prepare(rows, days, WORK)
    prepare_seconds = time.perf_counter() - t0
    version = register(settings, family, sample_rows=min(rows, 200_000))
    t1 = time.perf_counter()
    model = scoring.load_model(settings)
    load_seconds = time.perf_counter() - t1
    in_rows, in_seconds = inprocess_rate(settings, model, min(rows, 1_000_000))
    with PeakRss() as rss:
        c0 = time.process_time()
        manifest = scoring.score(settings, model=model)
        cpu = time.process_time() - c0
    if manifest["read"] != rows or manifest["scored"] + manifest["refused"] != manifest["read"]:
        raise RuntimeError(f"accounting: {rows} rows, manifest {manifest['read']} read, {manifest['scored']} scored")
    seconds = manifest["seconds"]
    rows_per_s = rows / seconds
    inprocess = in_rows / in_seconds
    output = scoring.output_dir(settings) / "predictions"
    out_bytes = sum(p.stat().st_size for p in output.rglob("*.parquet"))
    result = {
        "rows": rows,
        "reduced": rows < FULL_ROWS,
        "note": (f"reduced run: {rows:,} rows, not the {FULL_ROWS:,} of the target" if rows < FULL_ROWS else ""),
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows_per_s),
        "inprocess_rows_per_s": round(inprocess),
        "ratio_to_inprocess": round(rows_per_s / inprocess, 3),
        "target_ratio": 0.5,
        "meets_target": rows_per_s >= 0.5 * inprocess,
        # Sampled while scoring (the process's lifetime high-water mark would be the untimed collection's).
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "cpu_seconds": round(cpu, 2),
        "scored": manifest["scored"],
        "refused": manifest["refused"],
        "partitions": manifest["partitions_scored"],
        "batch_rows": settings.scoring.batch_rows,
        "family": family,
        "runtime": model.predictor.runtime,
        "model_version": version,
        "model_load_seconds": round(load_seconds, 2),
        "inprocess_rows": in_rows,
        "output_mb": round(out_bytes / 2**20, 1),
        "prediction_log": "off (bench-serving measures the log)",
        "prepare_seconds": round(prepare_seconds, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    if not keep:
        shutil.rmtree(WORK, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=FULL_ROWS)
    parser.add_argument("--family", default="hist_gradient_boosting", help="the model family scored")
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/.work/score afterwards")
    parser.add_argument("--out", type=Path, default=RESULT, help=f"default: {RESULT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.rows < FULL_ROWS:
        print(f"REDUCED RUN: {args.rows:,} rows (the target is measured at {FULL_ROWS:,})")
    result = run(args.rows, args.family, args.keep)
    write_result(result, args.out.resolve())


if __name__ == "__main__":
    main()
