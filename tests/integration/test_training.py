"""The training, promotion and rollback flows against a real MLflow tracking server.

Real data path: simulator -> warehouse -> collection -> processed splits (small), read by the flows
through core.data.datasets. Each test uses its own experiment and registered model name on the shared
session server.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.prefect_support import model_events
from tests.training_support import SMALL_DATA_ENV, build_processed_data


@pytest.fixture
def small_data(mlflow_env: str, monkeypatch: pytest.MonkeyPatch) -> str:

    for key, value in SMALL_DATA_ENV.items():
        monkeypatch.setenv(key, value)
    name = f"train-it-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLOPS_MODEL_NAME", name)
    monkeypatch.setenv("MLOPS_EXPERIMENT_NAME", name)
    build_processed_data()
    return name


def _alias(client: MlflowClient, name: str, alias: str) -> str | None:
    from core.registry.aliases import version_by_alias

    mv = version_by_alias(name, alias, client)
    return None if mv is None else str(mv.version)


def test_train_flow_records_registers_gates_and_is_reproducible(small_data: str, tmp_path: Path) -> None:
    from core.registry.artefact import load_version
    from pipelines.train import train

    name = small_data
    client = MlflowClient()
    first = train(families=["logistic", "hist_gradient_boosting"])

    # One MLflow run per family under the flow's parent run, with everything the issue lists.
    children = client.search_runs(
        [client.get_experiment_by_name(name).experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{first.parent_run_id}'",
    )
    assert sorted(r.data.tags["family"] for r in children) == ["hist_gradient_boosting", "logistic"]
    for run in children:
        assert {"C"} <= set(run.data.params) or {"max_iter", "learning_rate"} <= set(run.data.params)
        for key in ("cv_pr_auc", "cv_roc_auc", "cv_log_loss", "cv_brier", "cv_f1", "test_pr_auc", "threshold"):
            assert key in run.data.metrics, key
        assert any(k.startswith("test_slice_channel_") for k in run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "cv_fold_pr_auc")
        assert [m.step for m in history] == [0, 1]  # per-fold metrics, 2 folds in tests
        for tag in ("git_commit", "lock_hash", "config_hash", "data_version", "data_window_start", "data_window_end"):
            assert run.data.tags[tag], tag
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"train", "validation", "test", "holdout"}
        assert all(len(d.dataset.digest) == 32 for d in inputs.values())
        plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
        assert plots == {
            "confusion_matrix.png", "roc_curve.png", "pr_curve.png", "calibration.png", "permutation_importance.png"
        }  # fmt: skip
        # Each model logged in the run (the refit too, for the chosen family) carries the run's metrics.
        logged = mlflow.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run.info.run_id}'",
            output_format="list",
        )
        assert logged
        for model in logged:
            assert {"test_pr_auc", "cv_pr_auc", "threshold"} <= {m.key for m in model.metrics or []}, model.model_id

    # The best candidate is registered; the first model beat the trivial baseline and is champion.
    assert first.version == "1" and first.decision is not None
    assert first.decision["against"] == "baseline" and first.decision["decision"] == "promoted"
    assert _alias(client, name, "champion") == "1"
    mv = client.get_model_version(name, "1")
    for tag in ("decision", "reason", "primary_metric", "delta", "ci_low", "ci_high", "threshold", "family"):
        assert mv.tags[tag], tag
    assert mv.tags["family"] == first.best_family
    for section in ("## Intended use", "## Data", "## Metrics", "## Slices (holdout)", "## Decision"):
        assert section in mv.description
    # The stakeholder report: an artifact of the version's run, named by the version's `report` tag.
    report = _report(mv)
    assert "was promoted: it now serves" in report and "against the baseline" not in report
    assert "Results per slice" in report and "channel" in report and "<script" not in report

    # Serving's view: a plain sklearn Pipeline loaded with skops, threshold in the MLmodel metadata.
    info = mlflow.models.get_model_info(f"models:/{name}@champion")
    assert info.metadata["threshold"] == pytest.approx(float(mv.tags["threshold"]), abs=1e-6)
    assert info.metadata["family"] == first.best_family and info.metadata["positive_class"] == 1
    assert info.flavors["sklearn"]["serialization_format"] == "skops"
    model, _ = load_version(f"models:/{name}@champion")  # the loader serving uses
    assert [s for s, _ in model.steps] == ["preprocess", "model"]

    # Same data, config and seed: identical metrics. An identical model cannot clear the gate.
    second = train(families=["logistic", "hist_gradient_boosting"])
    for family in first.candidates:
        assert second.candidates[family]["cv"] == first.candidates[family]["cv"]
        assert second.candidates[family]["test"] == first.candidates[family]["test"]
    assert second.decision is not None and second.decision["decision"] == "challenger"
    assert second.decision["ci_low"] == 0.0 and second.decision["ci_high"] == 0.0
    assert _alias(client, name, "champion") == "1" and _alias(client, name, "challenger") == "2"
    rejected = _report(client.get_model_version(name, "2"))
    assert "was not promoted" in rejected and "for the champion" in rejected


def _report(mv: object) -> str:
    from core.registry.report import REPORT_TAG

    path = mv.tags[REPORT_TAG]  # type: ignore[attr-defined]
    local = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=path)  # type: ignore[attr-defined]
    return Path(local).read_text(encoding="utf-8")


def test_promote_and_rollback_flows(small_data: str) -> None:
    from pipelines.promote import promote
    from pipelines.rollback import rollback
    from pipelines.train import train

    name = small_data
    client = MlflowClient()
    train(families=["logistic"])  # v1: champion over the baseline
    assert _alias(client, name, "champion") == "1"
    train(families=["logistic"], register_best=False)  # logged, not registered
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # Promote a registered version that is better than the champion: register v2 by hand from a
    # stronger family's run, then let the promote flow gate it.
    better = train(families=["hist_gradient_boosting"], register_best=False)
    mv = mlflow.register_model(better.best_model_uri, name, tags={"threshold": "0.5", "family": better.best_family})
    outcome = promote(version=str(mv.version))
    assert outcome["decision"]["against"] == "champion"
    assert client.get_model_version(name, str(mv.version)).tags["decision"] == outcome["decision"]["decision"]

    # Rollback: whatever is champion now, point it back at v1 (or v2 when v1 already is) and say why.
    current = _alias(client, name, "champion")
    target = "2" if current == "1" else "1"
    result = rollback(version=target, reason="integration test")
    assert result["champion"] == target and result["previous_champion"] == current
    assert _alias(client, name, "champion") == target
    assert _alias(client, name, "previous-champion") == current
    assert client.get_model_version(name, target).tags["reason"] == "integration test"
    with pytest.raises(ValueError, match="needs a reason"):
        rollback(version=current, reason=" ")

    # Each gate decision and the rollback went out as Prefect events about this model, with their reasons.
    seen = model_events(name, {"mlops.promotion.decided": 2, "mlops.rollback.done": 1})
    promoted = {e["payload"]["version"]: e["payload"] for e in seen["mlops.promotion.decided"]}
    assert promoted[str(mv.version)]["decision"] == outcome["decision"]["decision"]
    assert promoted[str(mv.version)]["reason"] == outcome["decision"]["reason"]
    [rolled] = seen["mlops.rollback.done"]
    assert rolled["payload"]["champion"] == target and rolled["payload"]["reason"] == "integration test"
