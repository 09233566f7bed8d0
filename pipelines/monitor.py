"""The monitoring flow: compare a window of the prediction log with the reference, decide, maybe retrain.

    read window + labels -> load reference (+ champion scores) -> drift, quality, performance
      -> HTML report, Evidently workspace, MLflow run -> policy decision -> run the retraining deployment

Every run ends in one decision record (``<data_dir>/monitoring/decisions.jsonl``) and one MLflow run in
``<experiment>-monitoring``, including runs that could not compare anything: too little data, no
reference, an unreadable log or a failed report each get a ``status`` and a message, and never trigger.

With ``dask.address`` set, the window is read slice by slice on that cluster's workers and drift comes from
per-partition statistics merged (``monitoring.merged_drift.compute_drift_merged``); the record, the report and
the MLflow run have the same shape as locally.

Run once: ``python -m pipelines.monitor [--window-rows N] [--window-hours H] [--no-trigger]``; on the
schedule in ``monitoring.schedule_cron``: add ``--serve`` (or deploy it with ``prefect.yaml``).
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pandas as pd
from prefect import flow

from core.notify import notify
from core.settings import Settings, get_settings
from monitoring import decisions
from monitoring.drift import DriftError, DriftResult, compute_drift, sample_rows
from monitoring.merged_drift import compute_drift_merged
from monitoring.metrics import push_decision
from monitoring.policy import Decision, Evidence, RetrainPolicy, decide
from monitoring.reports import add_to_workspace, decision_tags, log_to_mlflow, report_dir, save_report
from monitoring.sources import (
    Champion,
    LogSlice,
    ReferenceMissingError,
    SourceError,
    load_champion,
    load_reference,
    read_window,
    reference_predictions,
    window_slices,
)
from pipelines import events
from pipelines.entry import run_main


@dataclass
class MonitorOutcome:
    """What one monitoring run did; ``record`` is the line appended to decisions.jsonl."""

    status: str  # ok | too_little_data | no_reference | log_unreadable | report_failed
    record: dict[str, Any] = field(default_factory=dict)
    result: DriftResult | None = None

    @property
    def retrain(self) -> bool:
        return bool(self.record.get("retrain"))

    @property
    def triggered(self) -> bool:
        return bool(self.record.get("triggered"))


def run_monitoring(
    window_rows: int | None = None,
    window_hours: float | None = None,
    trigger: bool = True,
    *,
    settings: Settings,
    now: datetime | None = None,
) -> MonitorOutcome:
    """The flow's body as plain Python. ``window_rows``/``window_hours`` default to configs when both None."""
    cfg = settings.monitoring
    now = now or datetime.now(UTC)
    if window_rows is None and window_hours is None:
        window_rows, window_hours = cfg.window_rows, cfg.window_hours
    policy = RetrainPolicy.from_settings(cfg)
    base: dict[str, Any] = {
        "decided_at": now.isoformat(),
        "window_rows_requested": window_rows,
        "window_hours_requested": window_hours,
        "trigger_requested": trigger,
        "retrain": False,
        "triggered": False,
    }

    # With a Dask cluster the window is never read whole here: its slices are read where they are summarised.
    window: pd.DataFrame | list[LogSlice]
    base["drift_executor"] = f"dask {settings.dask.address}" if settings.dask.address else "local"
    try:
        if settings.dask.address:
            window = window_slices(
                settings, window_rows=window_rows, window_hours=window_hours, rows_per_slice=cfg.partition_rows, now=now
            )
            served = sum(part.rows for part in window)
        else:
            window = read_window(settings, window_rows=window_rows, window_hours=window_hours, now=now)
            served = len(window)
    except SourceError as exc:
        return _finish(settings, "log_unreadable", base, message=str(exc))
    base["window_rows"] = served
    if served < policy.min_window_rows:
        message = f"too little data: {served} window rows < min_window_rows {policy.min_window_rows}"
        return _finish(settings, "too_little_data", base, message=message)

    try:
        reference, manifest = load_reference(settings)
    except ReferenceMissingError as exc:
        return _finish(settings, "no_reference", base, message=str(exc))
    base["reference_rows"] = len(reference)
    base["data_version"] = manifest.get("version")

    # Sample the reference before scoring it: the drift tests read no more than this anyway.
    reference = sample_rows(reference, cfg.reference_sample_rows, settings.seed)
    champion, notes = _champion(settings)
    if champion is not None and champion.model is not None:
        try:
            reference = pd.concat([reference, reference_predictions(champion.model, reference, settings)], axis=1)
        except Exception as exc:  # a model that cannot score the reference only costs prediction drift
            notes.append(f"prediction drift skipped: the champion could not score the reference ({exc})")
    if champion is not None:
        base["champion_version"] = champion.version

    try:
        if isinstance(window, list):
            result = _drift_on_dask(settings, reference, window)
        else:
            result = compute_drift(
                reference,
                window,
                settings.contract,
                reference_sample_rows=cfg.reference_sample_rows,
                window_sample_rows=cfg.window_sample_rows,
                drift_share=cfg.drift_share_threshold,
                seed=settings.seed,
            )
    except DriftError as exc:
        return _finish(settings, "report_failed", base, message=str(exc), notes=notes)

    notes.extend(result.notes)
    folder = report_dir(settings, now)
    html = save_report(result, folder)
    base["report_html"] = str(html)
    base["drift_share"] = result.drift_share
    base["drifted_columns"] = result.drifted_columns
    try:
        base["evidently_snapshot_id"] = add_to_workspace(result, settings, name=f"monitor {now.isoformat()}")
    except Exception as exc:  # the workspace is a view; its failure must not stop the decision
        notes.append(f"evidently workspace not updated: {exc}")

    evidence = Evidence(
        window_rows=served,
        column_drift={c: d.drifted for c, d in result.columns.items()},
        prediction_drift=result.prediction_drift,
        labelled_rows=result.performance.labelled_rows if result.performance else 0,
        performance=result.performance.metrics if result.performance else {},
        champion_performance=champion.holdout_metric if champion else None,
    )
    decision = decide(evidence, policy, now=now, last_trigger_at=decisions.last_trigger_at(_path(settings)))
    base.update(_decision_fields(decision))
    if decision.retrain and trigger:
        base.update(trigger_retraining(settings, decision.reason, {**base, "reasons": list(decision.reasons)}))
    elif decision.retrain:
        notes.append("retraining decided but not triggered: trigger=False")
    if decision.retrain or result.drifted_columns:
        notify(
            "drift_detected",
            f"{settings.model_name}: {'retraining' if base.get('triggered') else 'drift'} "
            f"({len(result.drifted_columns)} columns drifted)",
            {
                "drift share": f"{result.drift_share:.3f}",
                "drifted columns": ", ".join(result.drifted_columns) or "none",
                "decision": "retrain" if decision.retrain else "no retraining",
                "triggered": base.get("triggered", False),
                "why": decision.reason,
                "report": html,
            },
            settings,
        )
    return _finish(settings, "ok", base, result=result, html=html, notes=notes)


def _drift_on_dask(settings: Settings, reference: pd.DataFrame, window: list[LogSlice]) -> DriftResult:
    """The drift result from per-partition statistics, one task per window slice on the cluster at
    `dask.address` (monitoring/merged_drift.py); the workers read the prediction log themselves."""
    from core.cluster import ClusterUnreachableError, connect

    cfg = settings.monitoring
    assert settings.dask.address is not None
    try:
        client = connect(settings.dask.address, settings.dask.connect_timeout_s)
    except ClusterUnreachableError as exc:  # nothing was computed
        raise DriftError(str(exc)) from exc
    with client:
        return compute_drift_merged(
            reference,
            window,
            settings.contract,
            client=client,
            reference_sample_rows=cfg.reference_sample_rows,
            window_sample_rows=cfg.window_sample_rows,
            partition_rows=cfg.partition_rows,
            drift_share=cfg.drift_share_threshold,
            seed=settings.seed,
        )


def _champion(settings: Settings) -> tuple[Champion | None, list[str]]:
    try:
        champion = load_champion(settings)
    except Exception as exc:  # the registry being away costs prediction drift and the baseline, not the run
        return None, [f"champion not loaded ({type(exc).__name__}: {exc}): no prediction drift, no baseline"]
    if champion is None:
        alias = settings.serving.model_alias
        return None, [f"no model '{settings.model_name}@{alias}' yet: no prediction drift, no performance baseline"]
    return champion, []


def _decision_fields(decision: Decision) -> dict[str, Any]:
    return {
        "retrain": decision.retrain,
        "reasons": decision.reasons,
        "fired": decision.fired,
        "weighted_drift_share": decision.weighted_drift_share,
        "performance_drop": decision.performance_drop,
        "held_by_cooldown": decision.held_by_cooldown,
    }


def _path(settings: Settings) -> Path:
    return decisions.decisions_path(settings)


def prefect_api_url(settings: Settings) -> str:
    """The API a trigger goes to: the environment's, else the active Prefect profile's, else the local stack's."""
    from prefect.settings import PREFECT_API_URL

    # The environment first: Prefect reads its settings once, at import, and tests change the env later.
    configured = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    return configured or f"http://127.0.0.1:{settings.stack.prefect_port}/api"


def trigger_retraining(settings: Settings, reason: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Ask Prefect to retrain, without waiting for the run to finish; say clearly why when that is impossible.

    `monitoring.trigger: event` emits `mlops.monitoring.retrain-requested` with the reason and the cooldown
    (the `retrain` deployment's trigger in prefect.yaml starts the run) and waits up to
    `monitoring.trigger_follow_s` to record the run it started; `deployment` starts the deployment directly.
    Checks the API's health first: with no reachable server, Prefect's client would otherwise start a
    temporary local one, and no deployment would exist there.
    """
    api = prefect_api_url(settings)
    name = settings.monitoring.retrain_deployment
    try:
        with urllib.request.urlopen(f"{api.rstrip('/')}/health", timeout=3) as r:
            healthy = r.status == 200
    except (urllib.error.URLError, OSError) as exc:
        return {"triggered": False, "trigger_error": f"no Prefect API reachable at {api} ({exc})"}
    if not healthy:
        return {"triggered": False, "trigger_error": f"the Prefect API at {api} is not healthy"}
    if settings.monitoring.trigger == "event":
        return _request_by_event(settings, api, reason, decision)

    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment  # only a firing policy needs it
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings({PREFECT_API_URL: api}):
            # Called from sync code, run_deployment returns the FlowRun itself, not a coroutine.
            run = cast(FlowRun, run_deployment(name=name, parameters={"reason": reason}, timeout=0))
    except ObjectNotFound:
        return {"triggered": False, "trigger_error": f"no deployment '{name}' on the Prefect API at {api}"}
    except Exception as exc:  # HTTP and client errors: all mean "not started", and say which
        return {"triggered": False, "trigger_error": f"deployment '{name}' not started: {type(exc).__name__}: {exc}"}
    return {"triggered": True, "flow_run_id": str(run.id), "deployment": name, "trigger": "deployment"}


def _request_by_event(settings: Settings, api: str, reason: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Emit the retraining request; then find the run the deployment's trigger started for it."""
    from prefect.exceptions import ObjectNotFound

    cfg = settings.monitoring
    payload = {
        "reason": reason,
        "reasons": decision.get("reasons", []),
        "cooldown_hours": cfg.cooldown_hours,
        "decided_at": decision.get("decided_at"),
        "drift_share": decision.get("drift_share"),
        "champion_version": decision.get("champion_version"),
        "data_version": decision.get("data_version"),
    }
    try:
        event_id, _ = events.send_now(api, events.RETRAIN_REQUESTED, settings.model_name, payload)
    except Exception as exc:  # the websocket refused or dropped: nothing was requested
        return {"triggered": False, "trigger_error": f"event {events.RETRAIN_REQUESTED} not sent: {exc}"}
    out: dict[str, Any] = {"trigger": "event", "event": events.RETRAIN_REQUESTED, "event_id": event_id}
    try:
        run_id = events.find_triggered_run(api, cfg.retrain_deployment, event_id, cfg.trigger_follow_s)
    except ObjectNotFound:
        run_id = None
    if run_id is None:
        return {
            **out,
            "triggered": False,
            "trigger_error": f"event {events.RETRAIN_REQUESTED} sent, but no run of '{cfg.retrain_deployment}' "
            f"started within {cfg.trigger_follow_s:g}s: is the deployment and its trigger registered "
            "(`prefect deploy --all` reads prefect.yaml)?",
        }
    return {**out, "triggered": True, "flow_run_id": run_id, "deployment": cfg.retrain_deployment}


def _finish(
    settings: Settings,
    status: str,
    record: dict[str, Any],
    *,
    message: str | None = None,
    result: DriftResult | None = None,
    html: Path | None = None,
    notes: list[str] | None = None,
) -> MonitorOutcome:
    """Log the MLflow run, append the decision record, print the verdict."""
    record = {**record, "status": status}
    if message:
        record["message"] = message
        record.setdefault("reasons", [message])
    if notes:
        record["notes"] = notes
    record["reason"] = "; ".join(record.get("reasons", []))  # one line, as passed to the retraining flow
    try:
        record["mlflow_run_id"] = log_to_mlflow(
            settings,
            run_name=f"monitor-{record['decided_at']}",
            tags=decision_tags(record),
            result=result,
            html=html,
            extra_metrics={"window_rows": float(record.get("window_rows", 0))},
        )
    except Exception as exc:  # tracking being away must not lose the decision itself
        record["mlflow_error"] = f"{type(exc).__name__}: {exc}"
    if settings.monitoring.pushgateway_url:
        try:
            push_decision(
                settings.monitoring.pushgateway_url,
                record,
                model=settings.model_name,
                threshold=settings.monitoring.drift_share_threshold,
            )
        except Exception as exc:  # alerting being away must not lose the decision either
            record["push_error"] = f"{type(exc).__name__}: {exc}"
    decisions.record_decision(_path(settings), record)
    if record.get("push_error"):
        print(f"monitor: decision NOT pushed to {settings.monitoring.pushgateway_url}: {record['push_error']}")
    verdict = "RETRAIN" if record["retrain"] else "no retraining"
    print(f"monitor [{status}]: {verdict}; " + "; ".join(record.get("reasons", [])))
    for line in record.get("notes", []):
        print(f"monitor note: {line}")
    if record.get("trigger_error"):
        print(f"monitor: retraining NOT started: {record['trigger_error']}")
    return MonitorOutcome(status=status, record=record, result=result)


@flow(name="monitor", log_prints=True)
def monitor(window_rows: int | None = None, window_hours: float | None = None, trigger: bool = True) -> dict[str, Any]:
    """Prefect flow: one monitoring run; returns the decision record."""
    return run_monitoring(window_rows, window_hours, trigger, settings=get_settings()).record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-rows", type=int, default=None)
    parser.add_argument("--window-hours", type=float, default=None)
    parser.add_argument("--no-trigger", action="store_true", help="decide and record, never start retraining")
    parser.add_argument(
        "--serve", action="store_true", help="stay up and run on monitoring.schedule_cron (no work pool needed)"
    )
    args = parser.parse_args(argv)
    if args.serve:
        cron = get_settings().monitoring.schedule_cron
        monitor.serve(
            name="monitor-scheduled",
            cron=cron,
            parameters={
                "window_rows": args.window_rows,
                "window_hours": args.window_hours,
                "trigger": not args.no_trigger,
            },
        )
        return
    record = monitor(args.window_rows, args.window_hours, not args.no_trigger)
    print(json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    run_main(main)
