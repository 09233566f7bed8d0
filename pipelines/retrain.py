"""Flow `retrain`: what the monitoring policy starts when it decides the model is stale.

collect (new rows past the watermark) -> preprocess (new splits and a new frozen holdout) ->
train (default params) and tune (a trial budget) -> the promotion gate for each. The champion moves only if the gate
says so; the prediction service picks a new champion up by itself through the registry alias.
A failure anywhere leaves the champion as it was, and the run is marked failed in Prefect.

Run: ``prefect deployment run retrain/retrain --param reason="drift share 0.6"`` or
``python -m pipelines.retrain --reason manual``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from prefect import flow

from core.notify import notify
from core.settings import get_settings
from pipelines.collect import collect
from pipelines.entry import run_main
from pipelines.preprocess import preprocess
from pipelines.train import train


@flow(name="retrain", log_prints=True)
def retrain(
    reason: str = "manual",
    tune_trials: int | None = None,
    families: list[str] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Retrain on the newest data and let the gate decide.

    `event_id`: the `mlops.monitoring.retrain-requested` event that asked for this run, when its trigger
    (prefect.yaml) started it; recorded so the decision and the run point at each other.

    Trains the families with their default params (gated), then tunes them within a budget of
    `tune_trials` trials (default `tuning.retrain_trials`) and `tuning.retrain_timeout_seconds`; the
    study's best is gated against whatever is champion by then. 0 trials: train only.
    """
    settings = get_settings()
    started = time.perf_counter()
    print(f"retraining because: {reason}" + (f" (event {event_id})" if event_id else ""))
    collected = collect()
    processed = preprocess()
    fams = families or list(settings.training.families)
    result = train(families=fams)
    version, decision = result.version, result.decision
    trials = settings.tuning.retrain_trials if tune_trials is None else tune_trials
    if trials > 0:
        from pipelines.tune import tune

        outcome = tune(n_trials=trials, timeout_seconds=settings.tuning.retrain_timeout_seconds, families=fams)
        if (outcome.get("decision") or {}).get("decision") == "promoted" or not decision:
            version, decision = outcome.get("version"), outcome.get("decision")
    seconds = time.perf_counter() - started
    verdict = (decision or {}).get("decision", "not registered")
    notify(
        "retraining_finished",
        f"{settings.model_name}: retraining finished, v{version} {verdict}",
        {"reason": reason, "version": version, "decision": verdict, "seconds": f"{seconds:.0f}"},
        settings,
    )
    print(f"retraining finished in {seconds:.0f}s: v{version} {verdict}")
    return {
        "reason": reason,
        "event_id": event_id,
        "collected": collected,
        "data_version": processed.get("version"),
        "version": version,
        "decision": decision,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Collect, preprocess, train and gate, now.")
    parser.add_argument("--reason", default="manual")
    parser.add_argument("--tune-trials", type=int, default=None, help="default: tuning.retrain_trials")
    args = parser.parse_args()
    retrain(reason=args.reason, tune_trials=args.tune_trials)


if __name__ == "__main__":
    run_main(main)
