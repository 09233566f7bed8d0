"""The monitor flow with `dask.address` set, on a real Dask cluster (distributed.LocalCluster, 2 worker
processes), against the same flow without it, over the same prediction log, reference and champion: on the
fraud contract and on a generated non-fraud one.

On the cluster the window is read slice by slice by the workers and drift comes from per-partition
statistics merged (monitoring/merged_drift.py); locally from Evidently on the frames. Both samples hold every
row here (the window and reference are smaller than the sample sizes), so the verdicts must be the same:
drift share, each column's test and verdict, the dataset's verdict and the decision. Jensen-Shannon scores are
equal (counts add up); Wasserstein scores are computed on 1,000-bin histograms and differ slightly.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import yaml

from core.servers import free_port
from core.settings import Settings, get_settings
from tests import generated
from tests.integration.test_monitor_flow import write_log, write_reference

NOW = datetime.now(UTC).replace(microsecond=0)


def _fraud(settings: Settings) -> None:
    write_reference(settings)
    write_log(settings, 3_000, drifted=True, labelled=1_500)


def _generated(settings: Settings) -> None:
    """A processed reference and a shifted, partly labelled window of the generated binary contract."""
    from core.predictions import LogSchema

    contract = settings.contract
    frame, labels = generated.frame_for(contract, 4_000, seed=1)
    folder = settings.data_dir / "processed" / "v-test"
    folder.mkdir(parents=True, exist_ok=True)
    frame.assign(**{generated.TARGET: labels}).to_parquet(folder / "reference.parquet")
    (folder / "manifest.json").write_text(json.dumps({"splits": {"reference": {"rows": len(frame)}}}))
    (settings.data_dir / "processed" / "latest.json").write_text(json.dumps({"version": "v-test"}))

    n = 3_000
    window, truth = generated.frame_for(contract, n, seed=2, shift=0.5)
    rng = np.random.default_rng(3)
    proba = np.clip(0.3 * (truth == "churned") + rng.uniform(0, 0.7, n), 0, 1)
    schema = LogSchema(contract)
    inputs = window[contract.input_columns].rename(columns=schema.input_sql)
    rows = inputs.astype(object).where(inputs.notna(), None)
    rows = rows.assign(
        request_id=[f"req-{i}" for i in range(n)],
        model_name=settings.model_name,
        model_version="1",
        timestamp=[NOW - timedelta(seconds=n - i) for i in range(n)],
        latency_ms=2.0,
        prediction=np.where(proba >= 0.5, "churned", "stayed"),
        probability=proba,
    )
    predictions, feedback = schema.tables()
    settings.state.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(settings.prediction_log_url)
    predictions.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(predictions.insert(), rows.to_dict("records"))
        conn.execute(
            feedback.insert(),
            [{"request_id": f"req-{i}", "label": str(truth[i]), "received_at": NOW} for i in range(0, n, 2)],
        )
    engine.dispose()


def _generated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(generated.contract_dict("binary"), allow_unicode=True))
    monkeypatch.setenv("MLOPS_CONFIG", "configs/settings.yaml")
    monkeypatch.setenv("MLOPS_CONTRACT_PATH", str(path))


CASES: dict[str, tuple[Callable[[Settings], None], bool]] = {"fraud": (_fraud, False), "generated": (_generated, True)}


def _values(snapshot_id: str, settings: Settings) -> dict[str, float]:
    """Each column's drift score as the Evidently workspace stored it for this run."""
    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(settings.state / "evidently"))
    (project,) = ws.search_project(f"{settings.model_name} monitoring")
    model = ws.get_run(project.id, snapshot_id)
    assert model is not None
    return {
        m["config"]["column"]: float(m["value"])
        for m in Snapshot.load_model(model).dict()["metrics"]
        if m["config"].get("type") == "evidently:metric_v2:ValueDrift"
    }


@pytest.mark.parametrize("case", list(CASES))
def test_the_cluster_gives_the_local_verdicts_record_and_logs(
    case: str,
    dask_cluster: str,
    mlflow_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow

    from pipelines.monitor import run_monitoring
    from serving.example_model import register_example_model

    write, other_contract = CASES[case]
    if other_contract:
        _generated_env(tmp_path, monkeypatch)
    name = f"monitor-dask-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLOPS_EXPERIMENT_NAME", name)
    monkeypatch.setenv("MLOPS_MODEL_NAME", name)
    monkeypatch.setenv("MLOPS_MONITORING__MIN_WINDOW_ROWS", "500")
    monkeypatch.setenv("MLOPS_MONITORING__MIN_LABELLED_ROWS", "100")
    monkeypatch.setenv("MLOPS_MONITORING__COOLDOWN_HOURS", "0")
    monkeypatch.setenv("MLOPS_MONITORING__PARTITION_ROWS", "700")  # 3,000 window rows: 5 slices
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    write(get_settings())
    # A champion scores the reference: prediction drift (the probability) is compared too.
    register_example_model(get_settings().contract, name, n_rows=1_000, experiment_name=name)

    local = run_monitoring(trigger=False, settings=get_settings())
    monkeypatch.setenv("MLOPS_DASK__ADDRESS", dask_cluster)
    settings = get_settings()
    started = time.perf_counter()
    remote = run_monitoring(trigger=False, settings=settings)
    print(f"{case}: monitor run on dask {time.perf_counter() - started:.1f} s")

    assert local.status == remote.status == "ok", (local.record, remote.record)
    assert local.result is not None and remote.result is not None
    assert (local.record["drift_executor"], remote.record["drift_executor"]) == ("local", f"dask {dask_cluster}")
    # The record: same keys, same decision.
    assert set(local.record) == set(remote.record)
    for key in ("drift_share", "drifted_columns", "retrain", "fired", "reasons", "weighted_drift_share"):
        assert remote.record[key] == local.record[key], key
    for key in ("window_rows", "reference_rows", "performance_drop", "held_by_cooldown"):
        assert remote.record[key] == local.record[key], key
    assert remote.record["window_rows"] == 3_000 and local.record["drifted_columns"], "the window drifted"

    # Each column: the test Evidently picks, its threshold and verdict; the scores.
    lr, rr = local.result, remote.result
    assert (rr.drift_share, rr.dataset_drift) == (lr.drift_share, lr.dataset_drift)
    assert set(rr.columns) == set(lr.columns) and set(rr.prediction) == set(lr.prediction) == {"probability"}
    for column, expected in {**lr.columns, **lr.prediction}.items():
        got = {**rr.columns, **rr.prediction}[column]
        assert (got.kind, got.test, got.threshold, got.drifted) == (
            expected.kind,
            expected.test,
            expected.threshold,
            expected.drifted,
        ), column
        tolerance = 1e-9 if got.test.startswith("Jensen") else 0.01 + 0.02 * expected.score
        assert got.score == pytest.approx(expected.score, abs=tolerance), (column, got.score, expected.score)
    # Data quality added up over the slices, performance on the labelled rows they handed back.
    assert rr.quality == lr.quality
    assert lr.performance is not None and rr.performance is not None
    assert rr.performance.labelled_rows == lr.performance.labelled_rows == 1_500
    assert rr.performance.metrics == pytest.approx(lr.performance.metrics)
    assert (rr.window_rows, rr.reference_rows) == (lr.window_rows, lr.reference_rows)

    # MLflow: the same metrics; the Evidently workspace: the report carries the merged scores.
    assert "mlflow_error" not in local.record and "mlflow_error" not in remote.record, local.record
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    metrics = [client.get_run(o.record["mlflow_run_id"]).data.metrics for o in (local, remote)]
    assert set(metrics[0]) == set(metrics[1])
    assert metrics[1]["drift_share"] == metrics[0]["drift_share"]
    stored = _values(remote.record["evidently_snapshot_id"], settings)
    assert stored == pytest.approx({c: d.score for c, d in {**rr.columns, **rr.prediction}.items()})
    assert Path(remote.record["report_html"]).stat().st_size > 10_000
    assert (Path(remote.record["report_html"]).parent / "performance.html").exists()
