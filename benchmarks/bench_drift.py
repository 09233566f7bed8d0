"""Benchmark: the monitoring computation against a plain Evidently run, on 1,000,000 vs 100,000 rows.

Frames come from the simulator with the contract's columns: the reference from the quiet scenario, the
window from ``covariate_shift`` so that some verdicts are "drift". They are written to parquet once; each
computation then runs in its own child process (load, import, compute), so that each peak RSS figure
(the child's own ``ru_maxrss``) belongs to that computation alone.

* monitoring: ``monitoring.drift.compute_drift`` with the configured sample sizes (drift on seeded samples,
  data quality and performance on the whole window).
* plain: ``Report([DataDriftPreset()])`` on all rows, with the same contract-derived DataDefinition (so
  both judge the same feature columns; without it Evidently would also test the id and timestamp).

``seconds`` is the computation alone (frames loaded, Evidently imported); ``*_import_seconds`` says what a
cold process pays on top. ``agreement`` is the share of feature columns whose drift verdict is the same;
``agreement_min_over_seeds`` repeats the sampled run under ``--repeats`` other sampling seeds, so that the
figure does not rest on one lucky draw.

    python -m benchmarks.bench_drift [--reference-rows N] [--window-rows N] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.record import write_result

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "drift"
RESULT = ROOT / "benchmarks" / "results" / "drift.json"
TARGETS = {"seconds": 15.0, "peak_rss_mb": 2000.0, "agreement": 0.95}
MERGED_PARTS = (10, 4)  # reference and window partition files of the merged path


def build_frames(reference_rows: int, window_rows: int, seed: int) -> tuple[Path, Path]:
    from demo.simulator import simulate

    WORK.mkdir(parents=True, exist_ok=True)
    ref_path, win_path = WORK / f"reference_{reference_rows}.parquet", WORK / f"window_{window_rows}.parquet"
    if not ref_path.exists():
        simulate(reference_rows, seed=seed, start="2026-01-01", days=60, wrong_types=False).to_parquet(ref_path)
    if not win_path.exists():
        window = simulate(
            window_rows,
            seed=seed + 1,
            start="2026-03-02",
            days=7,
            scenario="covariate_shift",
            scenario_start="2026-03-02",
            wrong_types=False,
        )
        window.to_parquet(win_path)
    return ref_path, win_path


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 / 1024 / 1024 if platform.system() == "Darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def worker(kind: str, ref_path: Path, win_path: Path, out: Path, repeats: int = 0) -> None:
    """One computation in this (child) process; writes its timings, peak RSS and verdicts to ``out``."""
    import pandas as pd

    from core.settings import get_settings

    settings = get_settings()
    contract = settings.contract
    t0 = time.perf_counter()
    import evidently  # noqa: F401 - timed on its own: a cold process pays it once

    import_seconds = time.perf_counter() - t0
    if kind in ("merged", "merged-dask"):  # reads partition files one at a time: no whole frame loaded
        merged = _merged(kind, contract, ref_path, win_path)
        verdicts, seconds, peak = merged.pop("verdicts"), merged.pop("seconds"), _peak_rss_mb()
        _write(out, seconds, import_seconds, peak, verdicts=verdicts, extra=merged)
        return
    reference = pd.read_parquet(ref_path)
    window = pd.read_parquet(win_path)
    from monitoring.drift import column_verdicts, compute_drift, data_definition, drift_frame, run_drift_report

    t0 = time.perf_counter()
    if kind == "monitoring":
        cfg = settings.monitoring
        result = compute_drift(
            reference,
            window,
            contract,
            reference_sample_rows=cfg.reference_sample_rows,
            window_sample_rows=cfg.window_sample_rows,
            seed=settings.seed,
        )
        verdicts = result.columns
        seconds = time.perf_counter() - t0
        peak = _peak_rss_mb()  # before the repeats below, which are the same size anyway
        # The same computation under other sampling seeds: does the verdict hold, or did one seed get lucky?
        other_seeds = {
            str(seed): {
                c: d.drifted
                for c, d in compute_drift(
                    reference,
                    window,
                    contract,
                    reference_sample_rows=cfg.reference_sample_rows,
                    window_sample_rows=cfg.window_sample_rows,
                    seed=seed,
                ).columns.items()
            }
            for seed in range(settings.seed + 100, settings.seed + 100 + repeats)
        }
        extra: dict[str, Any] = {
            "reference_sample_rows": result.reference_sample_rows,
            "window_sample_rows": result.window_sample_rows,
            "new_category_rows": result.quality.total_new_category_rows,
            "other_seeds": other_seeds,
        }
    else:
        ref = drift_frame(reference[contract.feature_columns], contract)
        cur = drift_frame(window[contract.feature_columns], contract)
        snapshot = run_drift_report(ref, cur, data_definition(contract))
        verdicts = column_verdicts(snapshot, contract.numeric_features)
        seconds = time.perf_counter() - t0
        peak = _peak_rss_mb()
        extra = {}
    _write(out, seconds, import_seconds, peak, verdicts=verdicts, extra=extra)


def _write(
    out: Path, seconds: float, import_seconds: float, peak: float, *, verdicts: Any, extra: dict[str, Any]
) -> None:
    out.write_text(
        json.dumps(
            {
                "seconds": seconds,
                "import_seconds": import_seconds,
                "peak_rss_mb": peak,
                "columns": {c: {"test": d.test, "score": d.score, "drifted": d.drifted} for c, d in verdicts.items()},
                **extra,
            }
        )
    )


def _partitions(path: Path, parts: int) -> list[Path]:
    """`path` cut into `parts` Parquet files beside it (once): the partitions the merged path reads."""
    import pyarrow.parquet as pq

    folder = path.with_suffix(f".{parts}-parts")
    files = [folder / f"part-{i:03d}.parquet" for i in range(parts)]
    if not all(f.exists() for f in files):
        folder.mkdir(exist_ok=True)
        table = pq.read_table(path)
        size = -(-table.num_rows // parts)
        for i, f in enumerate(files):
            pq.write_table(table.slice(i * size, size), f)
    return files


def _merged(kind: str, contract: Any, ref_path: Path, win_path: Path) -> dict[str, Any]:
    """monitoring.merged_drift over the partition files, here or on a LocalCluster of 2 worker processes."""
    from functools import partial

    import pandas as pd

    from monitoring.merged_drift import merged_drift

    reference = [partial(pd.read_parquet, f) for f in _partitions(ref_path, MERGED_PARTS[0])]
    window = [partial(pd.read_parquet, f) for f in _partitions(win_path, MERGED_PARTS[1])]
    with contextlib.ExitStack() as stack:
        client = None
        if kind == "merged-dask":
            from distributed import Client, LocalCluster

            cluster = stack.enter_context(
                LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
            )
            client = stack.enter_context(Client(cluster))
        t0 = time.perf_counter()
        result = merged_drift(reference, window, contract, client=client)
        return {"verdicts": result.columns, "seconds": time.perf_counter() - t0, "skipped": result.skipped}


def _run_child(kind: str, ref_path: Path, win_path: Path, repeats: int = 0) -> dict[str, Any]:
    out = WORK / f"{kind}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.bench_drift", "--worker", kind, str(ref_path), str(win_path), str(out)]
    cmd += ["--repeats", str(repeats)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return dict(json.loads(out.read_text()))


def compare(mon: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    cols = sorted(plain["columns"])
    same = [c for c in cols if c in mon["columns"] and mon["columns"][c]["drifted"] == plain["columns"][c]["drifted"]]
    return {
        "agreement": len(same) / len(cols) if cols else 0.0,
        "disagreeing_columns": [c for c in cols if c not in same],
        "max_abs_score_diff": max(
            (abs(mon["columns"][c]["score"] - plain["columns"][c]["score"]) for c in cols if c in mon["columns"]),
            default=0.0,
        ),
        "columns": {
            c: {
                "test": plain["columns"][c]["test"],
                "plain_score": round(plain["columns"][c]["score"], 5),
                "sampled_score": round(mon["columns"][c]["score"], 5) if c in mon["columns"] else None,
                "plain_drifted": plain["columns"][c]["drifted"],
                "sampled_drifted": mon["columns"][c]["drifted"] if c in mon["columns"] else None,
            }
            for c in cols
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="drift benchmark: monitoring computation vs plain Evidently")
    parser.add_argument("--reference-rows", type=int, default=1_000_000)
    parser.add_argument("--window-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--repeats", type=int, default=5, help="extra sampling seeds checked for agreement")
    parser.add_argument("--worker", nargs=4, metavar=("KIND", "REF", "WIN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, ref, win, out = args.worker
        worker(kind, Path(ref), Path(win), Path(out), args.repeats)
        return

    from core.settings import get_settings

    ref_path, win_path = build_frames(args.reference_rows, args.window_rows, args.seed)
    mon = _run_child("monitoring", ref_path, win_path, args.repeats)
    plain = _run_child("plain", ref_path, win_path)
    cmp = compare(mon, plain)
    _partitions(ref_path, MERGED_PARTS[0])  # the partition files, written before anything is timed
    _partitions(win_path, MERGED_PARTS[1])
    merged = _run_child("merged", ref_path, win_path)
    merged_dask = _run_child("merged-dask", ref_path, win_path)
    merged_cmp = compare(merged, plain)
    # Agreement under each extra sampling seed (same sizes), against the same plain run.
    per_seed = {
        seed: sum(v == plain["columns"][c]["drifted"] for c, v in cols.items()) / len(plain["columns"])
        for seed, cols in mon.get("other_seeds", {}).items()
    }
    cfg = get_settings().monitoring
    result = {
        "seconds": round(mon["seconds"], 3),
        "peak_rss_mb": round(mon["peak_rss_mb"], 1),
        "plain_seconds": round(plain["seconds"], 3),
        "plain_peak_rss_mb": round(plain["peak_rss_mb"], 1),
        "agreement": round(cmp["agreement"], 4),
        "targets": TARGETS,
        "meets_targets": {
            "seconds": mon["seconds"] <= TARGETS["seconds"],
            "peak_rss_mb": mon["peak_rss_mb"] <= TARGETS["peak_rss_mb"],
            "agreement": cmp["agreement"] >= TARGETS["agreement"],
        },
        "import_seconds": round(mon["import_seconds"], 3),
        "plain_import_seconds": round(plain["import_seconds"], 3),
        "reference_rows": args.reference_rows,
        "window_rows": args.window_rows,
        "reference_sample_rows": mon["reference_sample_rows"],
        "window_sample_rows": mon["window_sample_rows"],
        "sample_sizes_from": "configs/settings.yaml monitoring.reference_sample_rows / window_sample_rows",
        "configured_samples": [cfg.reference_sample_rows, cfg.window_sample_rows],
        "window_scenario": "covariate_shift",
        "disagreeing_columns": cmp["disagreeing_columns"],
        "agreement_other_seeds": per_seed,
        "agreement_min_over_seeds": round(min([cmp["agreement"], *per_seed.values()]), 4),
        "max_abs_score_diff": round(cmp["max_abs_score_diff"], 5),
        "columns": cmp["columns"],
        "merged": {
            "what": "monitoring.merged_drift: every row, per-partition statistics merged (no sample)",
            "partitions": {"reference": MERGED_PARTS[0], "window": MERGED_PARTS[1]},
            "agreement": round(merged_cmp["agreement"], 4),
            "disagreeing_columns": merged_cmp["disagreeing_columns"],
            "max_abs_score_diff": round(merged_cmp["max_abs_score_diff"], 5),
            "seconds": round(merged["seconds"], 3),
            "peak_rss_mb": round(merged["peak_rss_mb"], 1),
            "dask_2_workers_seconds": round(merged_dask["seconds"], 3),
            "dask_same_verdicts_and_scores": merged_dask["columns"] == merged["columns"],
            "skipped": merged["skipped"],
            "scores": {c: round(v["score"], 5) for c, v in merged["columns"].items()},
        },
        "notes": (
            "seconds and peak_rss_mb: compute_drift in its own process, frames loaded and evidently imported "
            "(peak RSS includes both frames). plain: Report([DataDriftPreset()]) on all rows with the same "
            "contract DataDefinition, in another process. Both use Wasserstein/Jensen-Shannon (reference > 1000 rows)."
        ),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
    }
    result["merged_agreement"] = result["merged"]["agreement"]
    result["merged_seconds"] = result["merged"]["seconds"]
    shown = ("seconds", "peak_rss_mb", "plain_seconds", "plain_peak_rss_mb", "agreement", "merged_agreement")
    write_result(result, args.out, shown=(*shown, "merged_seconds"))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    main()
