"""Benchmark: the tuning flow with 1 vs 2 parallel workers, and with vs without pruning.

The same study configuration (families, search space, seeded TPE sampler, fixed number of trials,
CV folds) on the same data, run three times through the real ``tune`` flow (MLflow tracking on,
registration off):

- A: 1 worker, no pruning;   B: 2 worker processes, no pruning;   C: 1 worker, median pruning.

Throughput compares A and B (pruning off, so both do the same amount of work per trial on average);
the pruning effect compares A and C (same single worker). Time is the span from the first trial's
start to the last trial's end as the study storage records it, so process start-up (imports) is not
counted against either side.

Writes benchmarks/results/tuning.json: trials_per_min_1, trials_per_min_2, parallel_efficiency
(= trials_per_min_2 / (2 * trials_per_min_1)), pruning_time_saved_share (= 1 - C / A time),
best_score_with_pruning, best_score_without_pruning (mean CV PR AUC), plus context.

Run: ``make bench-tuning`` or ``make bench-tuning BENCH_ARGS="--trials 20 --rows 10000"``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_training import prepare_data
from benchmarks.record import write_result

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "tuning.json"


def run_study(label: str, n_trials: int, workers: int, pruning: bool) -> dict[str, Any]:
    from pipelines.tune import tune

    started = time.perf_counter()
    result = tune(
        n_trials=n_trials,
        n_workers=workers,
        pruning=pruning,
        register_best=False,
        study_name=f"bench-{label}-{time.strftime('%H%M%S')}",
    )
    s = result["summary"]
    return {
        "workers": workers,
        "pruning": pruning,
        "trials": s.n_trials,
        "complete": s.n_complete,
        "pruned": s.n_pruned,
        "failed": s.n_failed,
        "span_seconds": round(s.span_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "trials_per_min": round(s.trials_per_min, 3),
        "best_value": round(s.best_value, 5),
        "best_family": s.best_family,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--rows", type=int, default=20_000, help="training rows the study searches on")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "tuning")
    args = parser.parse_args(argv)

    prepare_data(args.work, args.rows)
    os.environ["MLOPS_TUNING__MAX_ROWS"] = str(args.rows)
    from core.settings import get_settings

    settings = get_settings()
    runs = {
        "one_worker_no_pruning": run_study("1w", args.trials, 1, False),
        "two_workers_no_pruning": run_study("2w", args.trials, 2, False),
        "one_worker_pruning": run_study("1w-pruned", args.trials, 1, True),
    }
    a, b, c = runs["one_worker_no_pruning"], runs["two_workers_no_pruning"], runs["one_worker_pruning"]
    out = {
        "trials_per_min_1": a["trials_per_min"],
        "trials_per_min_2": b["trials_per_min"],
        "parallel_efficiency": round(b["trials_per_min"] / (2 * a["trials_per_min"]), 3),
        "pruning_time_saved_share": round(1 - c["span_seconds"] / a["span_seconds"], 3),
        "best_score_with_pruning": c["best_value"],
        "best_score_without_pruning": a["best_value"],
        "metric": f"mean CV {settings.training.primary_metric} ({settings.training.cv_folds} time-ordered folds)",
        "n_trials": args.trials,
        "rows": args.rows,
        "families": list(settings.tuning.families),
        "sampler": settings.tuning.sampler,
        "pruner": settings.tuning.pruner,
        "runs": runs,
        "notes": "time = first trial start to last trial end (study storage timestamps); worker process "
        "start-up is excluded. Each worker uses one thread.",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_result(out, RESULT)


if __name__ == "__main__":
    main()
