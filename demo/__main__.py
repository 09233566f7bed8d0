"""`make demo`: the whole loop on embedded defaults, with progress, ending in the URLs to look at.

1. servers: MLflow tracking server, Prefect server, work pool, deployments, process worker
2. data: simulated warehouse -> collection -> preprocessing
3. model: training and the promotion gate (skipped when a champion exists)
4. serving: the prediction API on the champion
5. traffic that drifts, scored over HTTP with labels fed back
6. monitoring -> retraining deployment -> gate -> the API swaps to the new champion
7. where to look

Everything lives under the state directory (.state/ by default). Running it again reuses the
servers, the data and the champion, and sends another period of traffic. `make stop` stops it all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from rich.console import Console

from core.settings import Settings, get_settings
from demo import stack

console = Console()


def say(msg: str) -> None:
    console.print(f"  {msg}")


def step(n: int, title: str) -> None:
    console.rule(f"[bold cyan]{n}/7  {title}")


def run_demo(scenario: str, drift_days: int, tune_trials: int) -> int:
    started = time.perf_counter()
    settings = get_settings()
    step(1, "servers")
    s = stack.up_servers(settings, say=say)
    # From here on this process, the worker and the API share one tracking server and one Prefect API.
    os.environ.update(stack.env_for_flows(settings, s))
    os.environ.setdefault("MLOPS_SERVING__RELOAD_INTERVAL_S", "3")
    settings = get_settings()

    step(2, "data: collection and preprocessing")
    from pipelines.collect import collect
    from pipelines.preprocess import preprocess

    collected = collect()
    say(f"collected: {collected.get('rows_loaded', 0)} rows loaded, {collected.get('rows_quarantined', 0)} quarantined")
    processed = preprocess()
    say(f"processed datasets version {processed['version']}")

    step(3, "model: training and the promotion gate")
    from demo.loop import _champion_version

    champion = _champion_version(settings)
    if champion:
        say(f"champion already registered: v{champion} (kept)")
    else:
        from pipelines.train import train

        result = train()
        say(f"best family {result.best_family}; v{result.version}: {(result.decision or {}).get('decision')}")
        champion = _champion_version(settings)
        if not champion:
            console.print("[red]the first model did not beat the trivial baseline: no champion to serve[/]")
            return 1
        if tune_trials > 0:
            from pipelines.tune import tune

            say(f"tuning: an Optuna study of {tune_trials} trials across the families (nested runs in MLflow) ...")
            study = tune(n_trials=tune_trials)
            best = study["summary"]
            verdict = (study.get("decision") or {}).get("decision")
            say(f"study best: {best.best_family} ({best.n_trials} trials, {best.n_pruned} pruned)")
            say(f"its best configuration, registered as v{study.get('version')}: {verdict}")
            champion = _champion_version(settings)

    step(4, "serving")
    s = stack.up_api(settings, s, say=say)
    assert s.api_url is not None
    say(f"API serving v{champion} at {s.api_url}")

    step(5, f"traffic: {drift_days} days with '{scenario}' switched on")
    step(6, "monitoring -> retraining -> gate -> hot swap")
    from demo.loop import turn

    t = turn(settings, s.api_url, s.prefect_api_url, scenario=scenario, days=drift_days, say=say)
    decision = "retraining triggered" if t.monitor.get("triggered") else "no retraining"
    say(f"monitoring: {decision}: {'; '.join(t.monitor.get('reasons', []))}")
    if t.loop_seconds is not None:
        say(f"[green]the API now serves v{t.version_after}[/] ({t.loop_seconds:.0f}s from the first drifted request)")
    elif t.retrain_state:
        say(f"retraining ended {t.retrain_state}; the API still serves v{t.version_after} (see the gate's reason)")

    step(7, "where to look")
    _print_urls(settings, s, t.monitor)
    console.print(f"demo finished in {time.perf_counter() - started:.0f}s. `make stop` stops every process.")
    return 0


def _print_urls(settings: Settings, s: stack.Stack, record: dict[str, object]) -> None:
    reports = sorted((settings.state / "reports").glob("*/drift.html"))
    rows = [
        ("MLflow UI (runs, study, registry, model card)", s.mlflow_url),
        ("Prefect UI (flow runs, deployments)", s.components["prefect"].url),
        ("API docs (OpenAPI)", f"{s.api_url}/docs"),
        ("API metrics (Prometheus)", f"{s.api_url}/metrics"),
        ("latest drift report", str(reports[-1]) if reports else "none yet"),
        ("Evidently workspace", f".venv/bin/evidently ui --workspace {settings.state / 'evidently'}"),
        ("monitoring decisions", str(settings.data_dir / "monitoring" / "decisions.jsonl")),
        ("raw snapshots / quarantine", f"{settings.data_dir / 'raw'} / {settings.data_dir / 'quarantine'}"),
        ("logs", str(settings.state / "logs")),
    ]
    for name, url in rows:
        console.print(f"  [bold]{name:<48}[/] {url}")
    console.print("\n  To operate the running stack from another shell (see README.md, docs/runbook.md):")
    console.print(f"    export PREFECT_API_URL={s.prefect_api_url} MLOPS_MLFLOW_TRACKING_URI={s.mlflow_url}")
    console.print("    prefect deployment run retrain/retrain --param reason=manual; .venv/bin/mlops status")
    if record.get("report_path"):
        console.print(f"  [bold]{'this run`s drift report':<48}[/] {record['report_path']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stop", action="store_true", help="stop every process the demo started")
    parser.add_argument("--scenario", default="concept_drift", help="drift scenario for the traffic")
    parser.add_argument("--drift-days", type=int, default=21)
    parser.add_argument("--tune-trials", type=int, default=12, help="Optuna trials after the first training")
    args = parser.parse_args(argv)
    if args.stop:
        stopped = stack.down(get_settings(), say=say)
        console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return
    try:
        code = run_demo(args.scenario, args.drift_days, args.tune_trials)
    except Exception as exc:
        logs = get_settings().state / "logs"
        console.print(f"[red]demo failed: {type(exc).__name__}: {exc}[/]\nserver logs: {logs}")
        console.print("the servers are left running for inspection; `make stop` stops them")
        raise SystemExit(1) from exc
    sys.exit(code)


if __name__ == "__main__":
    main()
