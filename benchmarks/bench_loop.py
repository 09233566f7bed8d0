"""`make bench-loop`: seconds from the first drifted request, and from the monitoring decision, to the first
response from the new champion.

On the default data (configs/settings.yaml) in a fresh state directory: the stack starts (MLflow,
Prefect server and worker, deployments), the first model is trained and served, then days of
concept-drifted traffic go through the API with their labels fed back, the monitoring flow runs,
the policy starts the retraining deployment on the worker, the gate decides, and the API's watcher
swaps. Start-up and the first training are outside the measured span; everything from the first
drifted request on is inside it, including the HTTP traffic and the feedback. decision_to_serving_s
starts when the monitoring flow has decided (and sent its event): the retraining run, the gate, the alias
move and the API's swap. Default settings (the API's 30 s poll) unless --reload-interval says otherwise.

Writes benchmarks/results/loop.json.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from benchmarks.record import write_result

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent / ".work" / "loop"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="concept_drift")
    parser.add_argument("--drift-days", type=int, default=21)
    parser.add_argument(
        "--reload-interval", default=None, help="the API's alias poll interval (s); default: the settings' own"
    )
    args = parser.parse_args()

    from demo import stack  # imports no Prefect: its settings are read once, at import

    shutil.rmtree(WORK, ignore_errors=True)
    env = {}
    if args.reload_interval is not None:
        env["MLOPS_SERVING__RELOAD_INTERVAL_S"] = args.reload_interval
        print(f"NOTE: serving.reload_interval_s set to {args.reload_interval} s (not the default)")
    started = time.perf_counter()
    with stack.temporary(WORK, env) as (settings, servers):
        # Imported only now, so that Prefect reads the stack's PREFECT_API_URL, not a temporary server's.
        from demo.loop import _champion_version, turn
        from pipelines.collect import collect
        from pipelines.preprocess import preprocess
        from pipelines.train import train

        setup_started = time.perf_counter()
        collect()
        preprocess()
        first = train()
        setup_s = time.perf_counter() - setup_started
        if _champion_version(settings) is None:
            raise SystemExit(f"no champion after the first training: {first.decision}")
        live = stack.up_api(settings, servers)
        assert live.api_url is not None
        t = turn(settings, live.api_url, live.prefect_api_url, scenario=args.scenario, days=args.drift_days)
    result = {
        "loop_seconds": round(t.loop_seconds, 1) if t.loop_seconds is not None else None,
        "target_seconds": 180,
        "scenario": args.scenario,
        "drift_days": args.drift_days,
        "rows_scored": t.traffic.rows,
        "requests": t.traffic.requests,
        "request_failures": t.traffic.failures,
        "labels_fed_back": t.feedback_accepted,
        "monitor_reasons": t.monitor.get("reasons"),
        "monitor_triggered": t.monitor.get("triggered"),
        "trigger_error": t.monitor.get("trigger_error"),
        "retrain_state": t.retrain_state,
        "version_before": t.version_before,
        "version_after": t.version_after,
        "phase_seconds": {k: round(v, 1) for k, v in t.timings.items()},
        "first_training_seconds": round(setup_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "simulator": settings.simulator.model_dump(),
        # The API's poll, the fallback: the registry's webhook tells it at once (demo/stack.py registers it).
        "reload_interval_s": settings.serving.reload_interval_s,
        "reload_interval_is_default": args.reload_interval is None,
        "decision_to_serving_s": round(t.decision_to_serving_s, 1) if t.decision_to_serving_s is not None else None,
        "decision_to_serving_target_s": 45,
    }
    write_result(result, RESULTS / "loop.json")
    if result["loop_seconds"] is None:
        raise SystemExit("the loop did not reach a new champion: see monitor_reasons / retrain_state above")


if __name__ == "__main__":
    main()
