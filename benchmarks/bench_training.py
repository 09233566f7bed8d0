"""Benchmark: the training flow (no tuning) against a plain script making the same fits, same data, same run.

1. Builds real processed datasets whose train split has ``--rows`` rows (simulator -> warehouse ->
   collection -> splits under benchmarks/.work/training; reused when already built; not timed).
2. Warm-up, not timed, so neither side pays a one-time cost: imports, Prefect's local API server
   (started by a no-op flow, as a deployment's worker would already have it) and the MLflow database
   schema (created once per installation).
3. Plain: for each configured family, ``core.modeling.training.fit_candidate`` (time-aware CV on train, final
   fit, threshold on validation, scores on test): no Prefect, no MLflow.
4. Pipeline: the ``train`` flow: the same ``fit_candidate`` calls plus everything around them (Prefect
   tasks, one MLflow run per family with params, metrics, inputs, plots, permutation importance, the
   skops model; registration and the promotion gate on the holdout).
5. With ``--repeats 2`` (default) the order is plain, flow, flow, plain and the means are compared.
6. Writes benchmarks/results/training.json {rows, pipeline_seconds, plain_seconds, overhead_ratio, ...}.

Run: ``make bench-training`` or ``make bench-training BENCH_ARGS="--rows 100000"``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

from benchmarks.record import write_result

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "training.json"
AS_OF = "2100-01-01"  # after the simulated period: every label is final, every row is collectable


def use_state(work: Path) -> None:
    """Point every setting-derived location at `work` (the flows read settings from the environment)."""
    os.environ["MLOPS_STATE_DIR"] = str(work)
    # Every simulated day is split, so the train split really has the benchmark's row count.
    os.environ["MLOPS_SPLITS__WINDOW_DAYS"] = "null"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")


def prepare_data(work: Path, train_rows: int, days: int = 60) -> dict[str, Any]:
    """Processed datasets with `train_rows` rows in the train split, built once and reused."""
    from core.data.datasets import DatasetsNotFoundError, latest_processed
    from core.settings import get_settings

    use_state(work)
    settings = get_settings()
    try:
        processed = latest_processed(settings)
        if processed.manifest["splits"]["train"]["rows"] == train_rows:
            return dict(processed.manifest)
    except DatasetsNotFoundError:
        pass
    import shutil

    from core.data.collection import run_collection
    from core.data.splits import build_splits
    from demo.simulator import write_warehouse

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    total = math.ceil(train_rows / settings.splits.train)
    write_warehouse(
        settings.warehouse_url, settings.source.table, n_rows=total, days=days, start="2026-01-01",
        as_of=AS_OF, contract=settings.contract,
    )  # fmt: skip
    run_collection(settings, as_of=AS_OF)
    return dict(build_splits(settings))


def run_plain(families: list[str]) -> float:
    from threadpoolctl import threadpool_limits

    from core.modeling.training import better, fit_configured, load_training_data, refit_pipeline
    from core.settings import get_settings

    settings = get_settings()
    t = settings.training
    started = time.perf_counter()
    data = load_training_data(settings)
    fitted = [fit_configured(settings, data, family) for family in families]
    if t.refit_before_holdout:  # the flow refits the chosen model before registering it: so does plain
        best = fitted[0]
        for cand in fitted[1:]:
            if better(t.primary_metric, cand.test[t.primary_metric], best.test[t.primary_metric]):
                best = cand
        with threadpool_limits(limits=t.n_threads):
            refit_pipeline(best.pipeline, data, settings.contract)
    return time.perf_counter() - started


def warm_up() -> None:
    from prefect import flow

    from core.registry.tracking import use_experiment
    from core.settings import get_settings

    @flow(name="bench-warm-up")
    def noop() -> None:
        return None

    noop()
    use_experiment(get_settings())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the train split")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "training")
    parser.add_argument("--repeats", type=int, default=2, help="2: plain, flow, flow, plain (means reported)")
    args = parser.parse_args(argv)

    manifest = prepare_data(args.work, args.rows)
    from core.settings import get_settings

    settings = get_settings()
    families: list[str] = list(settings.training.families)
    warm_up()
    from pipelines.train import TrainResult, train

    load_before = os.getloadavg()
    plain: list[float] = []
    pipeline: list[float] = []
    result: TrainResult | None = None

    def time_pipeline() -> None:
        nonlocal result
        started = time.perf_counter()
        result = train()
        pipeline.append(time.perf_counter() - started)

    # ABBA order when repeated (plain, flow, flow, plain): a load change on this shared machine
    # that drifts over the run then weighs on both sides alike.
    order = ["plain", "pipeline"] + (["pipeline", "plain"] * (args.repeats - 1))
    for side in order:
        if side == "plain":
            plain.append(run_plain(families))
        else:
            time_pipeline()
    assert result is not None
    pipeline_seconds, plain_seconds = sum(pipeline) / len(pipeline), sum(plain) / len(plain)
    out = {
        "rows": int(manifest["splits"]["train"]["rows"]),
        "pipeline_seconds": round(pipeline_seconds, 2),
        "plain_seconds": round(plain_seconds, 2),
        "overhead_ratio": round(pipeline_seconds / plain_seconds, 3),
        "order": order,
        "pipeline_runs_seconds": [round(x, 2) for x in pipeline],
        "plain_runs_seconds": [round(x, 2) for x in plain],
        "families": families,
        "cv_folds": settings.training.cv_folds,
        "n_threads": settings.training.n_threads,
        "last_registered_version": result.version,
        "last_gate_decision": (result.decision or {}).get("decision"),
        "split_rows": {k: v["rows"] for k, v in manifest["splits"].items()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "notes": "both sides in one process, in the order above; imports, the Prefect API server start and "
        "the MLflow schema creation are warmed up before either is timed. The second flow run is gated "
        "against the champion the first one registered.",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_result(out, RESULT)


if __name__ == "__main__":
    main()
