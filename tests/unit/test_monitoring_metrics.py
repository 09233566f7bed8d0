"""A monitoring decision pushed to a Pushgateway (a real HTTP server here) as the gauges the alerting
rules in deploy/prometheus/alerts.yml read."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.servers import free_port
from monitoring.metrics import push_decision
from tests.prometheus_support import push_receiver

ROOT = Path(__file__).resolve().parents[2]
DECIDED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_a_retraining_decision_is_pushed_under_the_model_name() -> None:
    record = {
        "decided_at": DECIDED.isoformat(),
        "status": "ok",
        "retrain": True,
        "triggered": False,
        "weighted_drift_share": 0.5,
        "window_rows": 20_000,
    }
    with push_receiver() as gw:
        push_decision(gw.url, record, model="house-prices", threshold=0.3)
        samples = gw.samples("/metrics/job/mlops-monitor/model/house-prices")
    assert samples[("mlops_monitoring_retrain_decision", ())] == 1.0
    assert samples[("mlops_monitoring_retrain_triggered", ())] == 0.0
    assert samples[("mlops_monitoring_drift_share", ())] == 0.5
    assert samples[("mlops_monitoring_drift_share_threshold", ())] == 0.3
    assert samples[("mlops_monitoring_last_run_timestamp_seconds", ())] == DECIDED.timestamp()
    assert samples[("mlops_monitoring_status", (("status", "ok"),))] == 1.0
    assert samples[("mlops_monitoring_window_rows", ())] == 20_000


def test_a_run_without_a_drift_verdict_pushes_no_share() -> None:
    record = {"decided_at": DECIDED.isoformat(), "status": "too_little_data", "retrain": False, "triggered": False}
    with push_receiver() as gw:
        push_decision(gw.url, record, model="m", threshold=0.3)
        samples = gw.samples("/metrics/job/mlops-monitor/model/m")
    assert math.isnan(samples[("mlops_monitoring_drift_share", ())])
    assert samples[("mlops_monitoring_retrain_decision", ())] == 0.0
    assert samples[("mlops_monitoring_status", (("status", "too_little_data"),))] == 1.0


def test_an_unreachable_gateway_raises_for_the_flow_to_record() -> None:
    record = {"decided_at": DECIDED.isoformat(), "status": "ok", "retrain": False}
    with pytest.raises(OSError):
        push_decision(f"http://127.0.0.1:{free_port()}", record, model="m", threshold=0.3, timeout_s=2)


def test_the_alerting_rules_read_only_metrics_that_are_exported_or_pushed() -> None:
    exported = "\n".join(p.read_text() for p in [*(ROOT / "serving").rglob("*.py"), ROOT / "monitoring/metrics.py"])
    rules = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    names = set(re.findall(r"\b((?:serving|mlops)_[a-z_]+?)(?:_bucket|_count|_sum)?\b", rules))
    assert names, "no metric found in the alerting rules"
    for name in names:
        assert f'"{name}"' in exported, f"alerts.yml reads {name}, which nothing exports"
