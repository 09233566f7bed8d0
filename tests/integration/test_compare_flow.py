"""The compare flow against real stores, on a non-fraud contract (binary, string labels: tests/scoring_support):
a SQLite prediction log in core/predictions.py's schema with champion and shadow rows sharing request ids,
feedback labels, the run's MLflow server and Prefect server (the events). The flow's body runs as plain
Python (``run_compare``); the gate's online evidence is read from the same log."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from core.settings import Settings, get_settings
from tests.prefect_support import model_events
from tests.scoring_support import write_dataset

NOW = datetime.now(UTC).replace(microsecond=0)
N = 800


@pytest.fixture
def env(mlflow_env: str, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    dataset = write_dataset("binary", tmp_path / "returns")
    for key, value in dataset.env.items():
        if key != "MLOPS_STATE_DIR":
            monkeypatch.setenv(key, value)
    name = f"compare-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLOPS_EXPERIMENT_NAME", name)
    monkeypatch.setenv("MLOPS_MODEL_NAME", name)
    monkeypatch.setenv("MLOPS_TRAINING__PRIMARY_METRIC", "roc_auc")
    monkeypatch.setenv("MLOPS_GATE__N_BOOTSTRAP", "200")
    yield get_settings()


def write_log(settings: Settings, *, challenger_better: bool, labelled: int) -> None:
    """Champion (v1) and shadow (v2) rows for the same N requests, `labelled` of them with feedback."""
    from core.predictions import tables

    rng = np.random.default_rng(5)
    y = rng.random(N) < 0.3
    predictions, feedback = tables(settings.contract)
    settings.state.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(settings.prediction_log_url)
    predictions.metadata.create_all(engine)
    rows = []
    for role, version, noise in (
        ("champion", "1", 2.5 if challenger_better else 0.8),
        ("shadow", "2", 0.8 if challenger_better else 2.5),
    ):
        p = 1 / (1 + np.exp(-((2 * y - 1) * 2.0 + rng.normal(0, noise, N))))
        rows += [
            {
                "request_id": f"req-{i}",
                "model_name": settings.model_name,
                "model_version": version,
                "timestamp": NOW - timedelta(seconds=N - i),
                "latency_ms": 2.0 if role == "champion" else 6.0,
                "prediction": "yes" if p[i] >= 0.5 else "no",
                "probability": float(p[i]),
                "role": role,
            }
            for i in range(N)
        ]
    with engine.begin() as conn:
        conn.execute(predictions.insert(), rows)
        if labelled:
            conn.execute(
                feedback.insert(),
                [
                    {"request_id": f"req-{i}", "label": "yes" if y[i] else "no", "received_at": NOW}
                    for i in range(labelled)
                ],
            )
    engine.dispose()


def test_compare_flow_logs_writes_and_emits(env: Settings) -> None:
    import mlflow

    from pipelines.compare import cursor_file, rollout_decisions_file, run_compare

    write_log(env, challenger_better=True, labelled=600)
    decisions = rollout_decisions_file(env)
    decisions.parent.mkdir(parents=True, exist_ok=True)
    line = {"decision": "rollback", "kind": "canary", "reason": "p99 320 ms > 250", "challenger_version": "2"}
    decisions.write_text(json.dumps(line) + "\n" + json.dumps({**line, "reason": "error rate"}) + "\n")

    outcome = run_compare(window_rows=10_000, settings=env, now=NOW)
    c, record = outcome.comparison, outcome.record
    assert (c.champion_version, c.challenger_version) == ("1", "2")
    assert c.paired_rows == N and c.labelled_pairs == 600
    assert c.ci_low is not None and c.ci_low > 0, c
    assert c.roles["shadow"].latency_p50_ms == pytest.approx(6.0)
    assert record["event_id"], "mlops.rollout.compared was not handed to Prefect"
    assert record["rollbacks_emitted"] == 2

    page = Path(record["report_html"])
    assert page.exists() and "Online comparison" in page.read_text()
    assert json.loads((page.parent / "online.json").read_text())["labelled_pairs"] == 600
    run = mlflow.MlflowClient(env.mlflow_tracking_uri).get_run(record["mlflow_run_id"])
    assert run.data.metrics["online_labelled_pairs"] == 600
    assert run.data.metrics["online_ci_low"] > 0
    assert run.data.tags["online.challenger_version"] == "2"

    # The cursor: nothing again; a new decision once; a half-written line waits.
    assert run_compare(window_rows=10_000, settings=env, now=NOW).record["rollbacks_emitted"] == 0
    with decisions.open("a") as fh:
        fh.write(json.dumps({**line, "reason": "score PSI"}) + "\n" + '{"decision": "rollb')
    assert run_compare(window_rows=10_000, settings=env, now=NOW).record["rollbacks_emitted"] == 1
    assert json.loads(cursor_file(env).read_text())["offset"] < decisions.stat().st_size

    # On the run's Prefect server: three comparisons, and each rollback once, with its reason.
    seen = model_events(env.model_name, {"mlops.rollout.compared": 3, "mlops.rollout.rolled-back": 3})
    assert len(seen["mlops.rollout.compared"]) == 3
    assert seen["mlops.rollout.compared"][0]["payload"]["challenger_version"] == "2"
    reasons = sorted(e["payload"]["reason"] for e in seen["mlops.rollout.rolled-back"])
    assert reasons == ["error rate", "p99 320 ms > 250", "score PSI"]
