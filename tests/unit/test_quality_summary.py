"""The model-quality job's summary (pipelines/quality_summary.py) against a real MLflow registry (SQLite
store), for a regression and a multiclass model: nothing in it knows the fraud data."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import get_settings
from pipelines import quality_summary


def model_name() -> str:
    return get_settings().model_name


def register(client: object, name: str, metrics: dict[str, float], tags: dict[str, str]) -> str:
    from mlflow import MlflowClient

    assert isinstance(client, MlflowClient)
    exp = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    run = client.create_run(exp.experiment_id)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, f"holdout_{key}", value)
    client.log_metric(run.info.run_id, "cv_ignored", 1.0)  # only holdout metrics are compared
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags)
    return str(mv.version)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating its tables takes seconds); each test has its own model."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def registry(
    store: str, state_dir: Path, private_registry: None, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> object:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLOPS_MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLOPS_MODEL_NAME", f"house-prices-{request.node.name[5:25]}")
    return MlflowClient(tracking_uri=store, registry_uri=store)


def test_a_challenger_is_compared_with_the_champion_in_each_metrics_direction(
    registry: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    assert isinstance(registry, MlflowClient)
    champion = register(registry, model_name(), {"rmse": 10.0, "r2": 0.80}, {"decision": "promoted"})
    registry.set_registered_model_alias(model_name(), "champion", champion)
    gate = {"decision": "rejected", "gate_against": f"champion v{champion}", "primary_metric": "rmse",
            "reason": "not better than the champion"}  # fmt: skip
    candidate = register(registry, model_name(), {"rmse": 12.0, "r2": 0.85}, gate)

    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert quality_summary.main([]) == 0
    text = summary.read_text()
    assert f"{model_name()} v{candidate}" in text
    assert f"Gate: **rejected** against champion v{champion}" in text
    assert f"| holdout metric | candidate v{candidate} | champion v{champion} |" in text
    rows = text.splitlines()
    primary = next(i for i, r in enumerate(rows) if r.startswith("| **rmse** (primary)"))
    assert rows[primary] == "| **rmse** (primary) | 12.0000 | 10.0000 | +2.0000 | worse |"  # lower is better
    assert rows[primary + 1] == "| r2 | 0.8500 | 0.8000 | +0.0500 | better |"
    assert "cv_ignored" not in text


def test_a_promoted_candidate_is_compared_with_the_champion_it_replaced(registry: object) -> None:
    from mlflow import MlflowClient

    assert isinstance(registry, MlflowClient)
    old = register(registry, model_name(), {"f1_macro": 0.70, "log_loss": 0.9}, {})
    new = register(registry, model_name(), {"f1_macro": 0.75, "log_loss": 0.8}, {"primary_metric": "f1_macro"})
    registry.set_registered_model_alias(model_name(), "previous-champion", old)
    registry.set_registered_model_alias(model_name(), "champion", new)

    text = quality_summary.markdown(quality_summary.compare(get_settings()))
    assert f"| candidate v{new} | previous-champion v{old} |" in text
    assert "| **f1_macro** (primary) | 0.7500 | 0.7000 | +0.0500 | better |" in text
    assert "| log_loss | 0.8000 | 0.9000 | -0.1000 | better |" in text


def test_the_first_model_says_there_is_nothing_to_compare_with(registry: object) -> None:
    from mlflow import MlflowClient

    assert isinstance(registry, MlflowClient)
    first = register(registry, model_name(), {"mae": 3.0}, {"decision": "promoted"})
    registry.set_registered_model_alias(model_name(), "champion", first)
    text = quality_summary.markdown(quality_summary.compare(get_settings()))
    assert "No champion to compare with" in text
    assert "| mae | 3.0000 | - | - |  |" in text


def test_an_empty_registry_is_a_clear_error(registry: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert quality_summary.main([]) == 1
    assert f"no registered version of {model_name()}" in capsys.readouterr().err


def test_without_any_champion_the_version_before_is_the_reference(registry: object) -> None:
    from mlflow import MlflowClient

    assert isinstance(registry, MlflowClient)
    register(registry, model_name(), {"accuracy": 0.9}, {"decision": "rejected"})  # e.g. over the latency budget
    second = register(registry, model_name(), {"accuracy": 0.8}, {"decision": "rejected"})
    text = quality_summary.markdown(quality_summary.compare(get_settings()))
    assert f"| candidate v{second} | previous version v1 |" in text
    assert "| accuracy | 0.8000 | 0.9000 | -0.1000 | worse |" in text
