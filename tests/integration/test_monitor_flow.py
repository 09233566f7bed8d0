"""The monitoring flow end to end against real stores: a SQLite prediction log with serving's schema, a
processed reference on disk, the session's MLflow server, a local Evidently workspace.

The flow runs as plain Python (``run_monitoring``, the body of the Prefect flow). Prefect itself is only
reached to start the retraining deployment: most tests point it at a closed port (the decision must say
so and still be recorded); one starts a temporary Prefect server holding a ``retrain/retrain`` deployment.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from core.servers import free_port
from core.settings import Settings, get_settings
from demo.simulator import simulate
from tests.prometheus_support import push_receiver
from tests.serving_support import wait_for

NOW = datetime.now(UTC).replace(microsecond=0)


def write_reference(settings: Settings, n: int = 4_000) -> None:
    """A processed dataset with a reference split, in the layout core.data.datasets reads."""
    version = "v-test"
    folder = settings.data_dir / "processed" / version
    folder.mkdir(parents=True, exist_ok=True)
    simulate(n, seed=11, wrong_types=False, true_labels=True).to_parquet(folder / "reference.parquet")
    (folder / "manifest.json").write_text(json.dumps({"splits": {"reference": {"rows": n}}}))
    (settings.data_dir / "processed" / "latest.json").write_text(json.dumps({"version": version}))


def write_log(settings: Settings, n: int, *, drifted: bool, labelled: int = 0, age: timedelta = timedelta()) -> None:
    """``n`` served rows (and ``labelled`` feedback labels) in the prediction log, serving's tables."""
    from core.predictions import tables

    contract = settings.contract
    scenario = {"scenario": "covariate_shift", "scenario_start": "2026-03-01"} if drifted else {}
    frame = simulate(n, seed=12, start="2026-03-01", days=3, wrong_types=False, true_labels=True, **scenario)
    rng = np.random.default_rng(3)
    # A scorer that knows something but not everything: positives score higher, with overlap.
    proba = np.clip(0.3 * frame["is_fraud"].to_numpy(dtype=float) + rng.uniform(0, 0.7, n), 0, 1)
    rows = frame[contract.input_columns].astype(object).where(frame[contract.input_columns].notna(), None)
    rows = rows.assign(
        request_id=[f"req-{i}" for i in range(n)],
        model_name=settings.model_name,
        model_version="1",
        timestamp=[NOW - age - timedelta(seconds=n - i) for i in range(n)],
        latency_ms=2.0,
        prediction=(proba >= 0.5).astype(int),
        probability=proba,
    )
    predictions, feedback = tables(contract)
    settings.state.mkdir(parents=True, exist_ok=True)  # the log's default SQLite file lives there
    engine = sa.create_engine(settings.prediction_log_url)
    predictions.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(predictions.insert(), rows.to_dict("records"))
        if labelled:
            labels = [
                {"request_id": f"req-{i}", "label": int(frame["is_fraud"].iloc[i]), "received_at": NOW}
                for i in range(labelled)
            ]
            conn.execute(feedback.insert(), labels)
    engine.dispose()


@pytest.fixture
def env(mlflow_env: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings for one test: its own MLflow experiment, small thresholds, no cooldown, Prefect at a closed port."""
    # The MLflow server is shared by the session: a name per test keeps each test's runs apart.
    name = f"monitor-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLOPS_EXPERIMENT_NAME", name)
    monkeypatch.setenv("MLOPS_MODEL_NAME", name)  # and its own registered model
    monkeypatch.setenv("MLOPS_MONITORING__MIN_WINDOW_ROWS", "500")
    monkeypatch.setenv("MLOPS_MONITORING__MIN_LABELLED_ROWS", "100")
    monkeypatch.setenv("MLOPS_MONITORING__COOLDOWN_HOURS", "0")
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    yield get_settings()


def _runs(settings: Settings) -> list[Any]:
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(f"{settings.experiment_name}-monitoring")
    assert exp is not None, "no monitoring experiment in MLflow"
    return list(client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]))


def _decisions(settings: Settings) -> list[dict[str, Any]]:
    from monitoring.decisions import decisions_path, read_decisions

    return read_decisions(decisions_path(settings))


def test_drifted_window_is_reported_logged_and_decided(env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from pipelines.monitor import run_monitoring

    write_reference(env)
    write_log(env, 3_000, drifted=True, labelled=1_500)
    with push_receiver() as gateway:
        monkeypatch.setenv("MLOPS_MONITORING__PUSHGATEWAY_URL", gateway.url)
        outcome = run_monitoring(trigger=True, settings=get_settings())
        pushed = gateway.samples(f"/metrics/job/mlops-monitor/model/{env.model_name}")

    # The decision reached the Pushgateway as the gauges deploy/prometheus/alerts.yml alerts on.
    assert pushed[("mlops_monitoring_retrain_decision", ())] == 1.0
    assert pushed[("mlops_monitoring_retrain_triggered", ())] == 0.0
    assert pushed[("mlops_monitoring_drift_share", ())] == pytest.approx(outcome.record["weighted_drift_share"])
    assert pushed[("mlops_monitoring_status", (("status", "ok"),))] == 1.0

    assert outcome.status == "ok"
    assert outcome.result is not None
    assert outcome.result.columns["amount"].drifted
    html = Path(outcome.record["report_html"])
    assert html.exists() and html.stat().st_size > 10_000
    assert html.parent.parent == env.state / "reports"

    # The policy fired on drift, the trigger could not reach Prefect, and both are on record.
    (rec,) = _decisions(env)
    assert rec["status"] == "ok" and rec["retrain"] is True and "drift" in rec["fired"]
    assert rec["triggered"] is False and "no Prefect API reachable" in rec["trigger_error"]
    assert any("weighted drift share" in r for r in rec["reasons"])
    assert any("no model" in n for n in rec["notes"])  # no champion yet: no baseline, said so

    (run,) = _runs(env)
    assert run.info.run_id == rec["mlflow_run_id"]
    m = run.data.metrics
    assert m["drift_share"] == pytest.approx(outcome.result.drift_share)
    assert m["drift_score_amount"] == pytest.approx(outcome.result.columns["amount"].score)
    assert m["labelled_rows"] == 1_500 and 0 < m["perf_pr_auc"] <= 1
    assert run.data.tags["monitor.retrain"] == "True" and run.data.tags["monitor.status"] == "ok"
    artifacts = {a.path for a in mlflow.MlflowClient(env.mlflow_tracking_uri).list_artifacts(run.info.run_id)}
    assert {"drift.html", "performance.html", "summary.json"} <= artifacts
    assert (html.parent / "performance.html").exists()  # labels arrived: Evidently's performance report too

    from evidently.ui.workspace import Workspace

    ws = Workspace(str(env.state / "evidently"))
    (project,) = ws.search_project(f"{env.model_name} monitoring")
    assert len(ws.list_runs(project.id)) == 2  # the drift snapshot and the performance snapshot


def test_trigger_starts_the_retraining_deployment_with_the_reason(
    env: Settings, monkeypatch: pytest.MonkeyPatch, prefect_server: str
) -> None:
    """A real Prefect server with a `retrain/retrain` deployment: the first run creates a flow run of it
    carrying the reason; the second, inside the cooldown, does not."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)  # the run's server, not the closed port
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.monitor import run_monitoring

    @flow(name="retrain")
    def retrain(reason: str = "") -> None:
        """Stands in for the retraining flow: only its deployment's name matters here."""

    monkeypatch.setenv("MLOPS_MONITORING__COOLDOWN_HOURS", "24")
    monkeypatch.setenv("MLOPS_MONITORING__TRIGGER", "deployment")
    write_reference(env)
    write_log(env, 2_000, drifted=True)
    # Prefect read its settings when this process first imported it, maybe under the closed port.
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            client.create_deployment(flow_id=client.create_flow(retrain), name="retrain")
        first = run_monitoring(trigger=True, settings=get_settings())
        second = run_monitoring(trigger=True, settings=get_settings())
        assert first.triggered, first.record.get("trigger_error")
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(uuid.UUID(first.record["flow_run_id"]))

    assert "weighted drift share" in flow_run.parameters["reason"]
    assert flow_run.parameters["reason"] == "; ".join(first.record["reasons"])
    assert not second.retrain and second.record["held_by_cooldown"] and not second.triggered
    assert [r["triggered"] for r in _decisions(get_settings())] == [True, False]


def _deploy_retrain_with_its_trigger(api: str, with_trigger: bool = True) -> uuid.UUID:
    """A `retrain/retrain` deployment on the run's Prefect server and, as `prefect deploy` would create it,
    the automation of the trigger prefect.yaml declares for it (read from prefect.yaml, not copied)."""
    import yaml
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.events import DeploymentTriggerTypes
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from pydantic import TypeAdapter

    from core.settings import PROJECT_ROOT

    @flow(name="retrain")
    def retrain(reason: str = "", event_id: str | None = None) -> None:
        """Stands in for the retraining flow: only its deployment and parameters matter here."""

    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    [declared] = [d for d in spec["deployments"] if d["name"] == "retrain"]
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(flow_id=client.create_flow(retrain), name="retrain")
        client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
        if with_trigger:
            for i, raw in enumerate(declared["triggers"], start=1):
                trigger = TypeAdapter(DeploymentTriggerTypes).validate_python(
                    {"name": f"retrain__automation_{i}", **raw}
                )
                trigger.set_deployment_id(deployment_id)
                client.create_automation(trigger.as_automation())
    return deployment_id


def test_the_retrain_request_event_starts_the_deployment_through_its_declared_trigger(
    env: Settings, monkeypatch: pytest.MonkeyPatch, prefect_server: str
) -> None:
    """monitoring.trigger: event (the default). The decision goes out as mlops.monitoring.retrain-requested
    with its reasons and cooldown; the trigger prefect.yaml declares on `retrain` starts a run carrying the
    reason and the event's id; the decision record names that run. Inside the cooldown, no second event."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    monkeypatch.setenv("MLOPS_MONITORING__COOLDOWN_HOURS", "24")
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.monitor import run_monitoring

    assert get_settings().monitoring.trigger == "event"
    _deploy_retrain_with_its_trigger(prefect_server)
    write_reference(env)
    write_log(env, 2_000, drifted=True)
    first = run_monitoring(trigger=True, settings=get_settings())
    second = run_monitoring(trigger=True, settings=get_settings())
    assert first.triggered, first.record.get("trigger_error")
    assert first.record["trigger"] == "event" and first.record["event"] == "mlops.monitoring.retrain-requested"
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(uuid.UUID(first.record["flow_run_id"]))
        query = {"filter": {"id": {"id": [first.record["event_id"]]}}}
        # The trigger acts on the event stream; the server writes events to its database in batches
        # (every few seconds), so the stored event can lag the run it started.
        [event] = wait_for(lambda: client.request("POST", "/events/filter", json=query).json()["events"], timeout=30)
    assert flow_run.parameters == {"reason": "; ".join(first.record["reasons"]), "event_id": first.record["event_id"]}
    assert "weighted drift share" in flow_run.parameters["reason"]
    assert event["resource"]["prefect.resource.id"] == f"mlops.model.{env.model_name}"
    assert event["payload"]["cooldown_hours"] == 24 and event["payload"]["reasons"] == first.record["reasons"]
    assert not second.retrain and second.record["held_by_cooldown"] and "event_id" not in second.record


def test_an_event_nobody_acts_on_is_recorded_as_not_triggered(
    env: Settings, monkeypatch: pytest.MonkeyPatch, prefect_server: str
) -> None:
    """The deployment exists but its trigger was never created (deployed without prefect.yaml): the event
    goes out, no run starts, and the decision says so and how to fix it instead of claiming a retraining."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    monkeypatch.setenv("MLOPS_MONITORING__TRIGGER_FOLLOW_S", "3")
    from pipelines.monitor import run_monitoring

    _deploy_retrain_with_its_trigger(prefect_server, with_trigger=False)
    write_reference(env)
    write_log(env, 2_000, drifted=True)
    outcome = run_monitoring(trigger=True, settings=get_settings())
    assert outcome.retrain and not outcome.triggered and outcome.record["event_id"]
    assert "prefect deploy --all" in outcome.record["trigger_error"]
    _deploy_retrain_with_its_trigger(prefect_server)  # leave the trigger in place for later tests


@pytest.mark.parametrize(
    ("rows", "window_hours", "age"),
    [(100, None, timedelta()), (2_000, 1.0, timedelta(hours=48))],  # too few rows; rows too old for the window
)
def test_too_little_data_says_so_and_triggers_nothing(
    env: Settings, rows: int, window_hours: float | None, age: timedelta, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.monitor import run_monitoring

    write_reference(env)
    write_log(env, rows, drifted=True, age=age)
    # A Pushgateway that does not answer is noted on the decision; the decision itself is kept.
    monkeypatch.setenv("MLOPS_MONITORING__PUSHGATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    outcome = run_monitoring(window_hours=window_hours, trigger=True, settings=get_settings())

    assert outcome.status == "too_little_data" and not outcome.retrain and not outcome.triggered
    assert outcome.record["message"].startswith("too little data")
    assert not (env.state / "reports").exists()
    (rec,) = _decisions(env)
    assert rec["status"] == "too_little_data" and rec["retrain"] is False
    assert "push_error" in rec
    (run,) = _runs(env)
    assert run.data.tags["monitor.status"] == "too_little_data"


def test_missing_reference_says_so_and_triggers_nothing(env: Settings) -> None:
    from pipelines.monitor import run_monitoring

    write_log(env, 2_000, drifted=True)
    outcome = run_monitoring(trigger=True, settings=get_settings())

    assert outcome.status == "no_reference" and not outcome.retrain and not outcome.triggered
    assert "no reference" in outcome.record["message"]
    assert _decisions(env)[0]["status"] == "no_reference"


def test_failing_report_says_so_and_triggers_nothing(env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.monitor as flow_module
    from monitoring.drift import DriftError

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise DriftError("the Evidently drift report failed: ValueError: boom")

    monkeypatch.setattr(flow_module, "compute_drift", broken)
    write_reference(env)
    write_log(env, 2_000, drifted=True)
    outcome = flow_module.run_monitoring(trigger=True, settings=get_settings())

    assert outcome.status == "report_failed" and not outcome.retrain and not outcome.triggered
    assert "boom" in outcome.record["message"]
    assert _decisions(env)[0]["status"] == "report_failed"


def test_log_rows_round_trip_keeps_the_contract_columns(env: Settings) -> None:
    """The window the flow reads back carries every contract input column, the outputs and the labels."""
    from monitoring.sources import read_window

    write_log(env, 600, drifted=False, labelled=100)
    window = read_window(env, window_rows=500, window_hours=None)
    assert len(window) == 500
    assert window["request_id"].iloc[-1] == "req-599"  # the newest rows, not the oldest
    assert set(env.contract.input_columns) <= set(window.columns)
    assert window["label"].notna().sum() == 0  # labels went to req-0..99, outside the newest 500
    assert pd.api.types.is_numeric_dtype(window["probability"])
    # The time window: rows are 0-10 minutes old.
    assert len(read_window(env, window_rows=None, window_hours=1.0)) == 600
    assert len(read_window(env, window_rows=None, window_hours=1.0, now=NOW - timedelta(hours=2))) == 600
    assert read_window(env, window_rows=None, window_hours=1.0, now=NOW + timedelta(hours=2)).empty


def test_champion_gives_prediction_drift_and_a_performance_baseline(env: Settings) -> None:
    """With a registered champion: the reference is scored for prediction drift, and the window's PR AUC is
    judged against the champion's recorded holdout value (set high here, so the drop must fire)."""
    import mlflow

    from pipelines.monitor import run_monitoring
    from serving.example_model import register_example_model

    model_name = env.model_name
    version = register_example_model(env.contract, model_name, n_rows=1_000, experiment_name=env.experiment_name)
    client = mlflow.MlflowClient(env.mlflow_tracking_uri)
    run_id = client.get_model_version(model_name, version).run_id
    assert run_id is not None
    client.log_metric(run_id, "holdout_pr_auc", 0.99)

    write_reference(env)
    write_log(env, 2_000, drifted=False, labelled=1_500)
    outcome = run_monitoring(trigger=False, settings=get_settings())

    assert outcome.status == "ok" and outcome.result is not None
    assert outcome.record["champion_version"] == version
    assert "probability" in outcome.result.prediction  # the champion scored the reference
    assert "prediction" not in outcome.result.prediction  # labels depend on a threshold: not compared
    assert outcome.result.performance is not None
    assert outcome.retrain and "performance" in outcome.record["fired"]
    # The drop is relative to the champion's holdout value (0.99 is what this test recorded for it).
    assert outcome.record["performance_drop"] == pytest.approx(
        (0.99 - outcome.result.performance.metrics["pr_auc"]) / 0.99
    )
    assert not outcome.triggered and "trigger=False" in " ".join(outcome.record["notes"])
