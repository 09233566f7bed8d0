"""A monitoring run's decision as Prometheus gauges, pushed to a Pushgateway.

A monitoring run is a batch job: nothing stays up for Prometheus to scrape, so each run pushes its
decision (`monitoring.pushgateway_url`) and the alerting rules in deploy/prometheus/alerts.yml read it:
a retraining decision, a drift share over the threshold, no run for too long.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

JOB = "mlops-monitor"


def decision_registry(record: dict[str, Any], threshold: float) -> CollectorRegistry:
    """The gauges of one decision record (the line appended to decisions.jsonl)."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, registry=registry).set(value)

    gauge(
        "mlops_monitoring_last_run_timestamp_seconds",
        "When the last monitoring run decided (Unix time).",
        datetime.fromisoformat(str(record["decided_at"])).timestamp(),
    )
    retrain = float(bool(record.get("retrain")))
    gauge("mlops_monitoring_retrain_decision", "1 if the last run decided to retrain.", retrain)
    gauge(
        "mlops_monitoring_retrain_triggered",
        "1 if the last run started the retraining deployment.",
        float(bool(record.get("triggered"))),
    )
    share = record.get("weighted_drift_share")
    # NaN when the run decided nothing about drift (too little data): "no value", not "no drift".
    gauge(
        "mlops_monitoring_drift_share",
        "Weighted share of drifted feature columns in the last run.",
        float(share) if share is not None else float("nan"),
    )
    gauge("mlops_monitoring_drift_share_threshold", "monitoring.drift_share_threshold.", threshold)
    status = Gauge("mlops_monitoring_status", "1 for the last run's status (ok, ...).", ["status"], registry=registry)
    status.labels(str(record.get("status", "unknown"))).set(1)
    rows = float(record.get("window_rows") or 0)
    gauge("mlops_monitoring_window_rows", "Prediction-log rows in the last run's window.", rows)
    return registry


def push_decision(url: str, record: dict[str, Any], *, model: str, threshold: float, timeout_s: float = 5.0) -> None:
    """Replace this model's monitoring gauges on the Pushgateway with those of `record`."""
    push_to_gateway(
        url, job=JOB, registry=decision_registry(record, threshold), grouping_key={"model": model}, timeout=timeout_s
    )
