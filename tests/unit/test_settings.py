"""Settings: YAML files, environment overrides, embedded defaults, refused secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import PROJECT_ROOT, Settings, SettingsError, get_settings, load_settings


def test_defaults_live_under_the_state_dir(state_dir: Path) -> None:
    s = get_settings()
    assert s.state == state_dir
    assert s.warehouse_url == f"sqlite:///{state_dir / 'warehouse.db'}"
    assert s.mlflow_tracking_uri.startswith("sqlite:///") and str(state_dir) in s.mlflow_tracking_uri
    assert s.prediction_log_url.endswith("predictions.db")
    assert s.data_dir == state_dir / "data"


def test_yaml_is_read_and_env_overrides_nested(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_settings().collection.max_bad_share == 0.05  # from configs/settings.yaml
    monkeypatch.setenv("MLOPS_COLLECTION__MAX_BAD_SHARE", "0.2")
    monkeypatch.setenv("MLOPS_WAREHOUSE_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
    s = get_settings()
    assert s.collection.max_bad_share == 0.2
    assert s.warehouse_url == "postgresql+psycopg://root@127.0.0.1:5432/test"


def test_later_config_file_overrides_earlier(tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("collection:\n  chunk_rows: 1234\n")
    monkeypatch.setenv("MLOPS_CONFIG", f"configs/settings.yaml,{extra}")
    s = Settings()
    assert s.collection.chunk_rows == 1234
    assert s.collection.max_bad_share == 0.05


def test_missing_config_file_is_named(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_CONFIG", "configs/nope.yaml")
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        Settings()


def test_unknown_setting_is_refused(state_dir: Path) -> None:
    with pytest.raises(ValidationError, match="colection"):
        Settings(colection={"max_bad_share": 0.1})


def test_split_shares_must_sum_to_one(state_dir: Path) -> None:
    with pytest.raises(ValidationError, match="sum to 1"):
        Settings(splits={"train": 0.9, "validation": 0.2, "test": 0.0, "holdout": 0.0})


def test_production_refuses_missing_admin_key(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="MLOPS_ADMIN_API_KEY"):
        Settings()
    monkeypatch.setenv("MLOPS_ADMIN_API_KEY", "s3cret-from-env")
    assert Settings().admin_api_key is not None


def test_contract_path_resolves_against_project_root(state_dir: Path) -> None:
    s = get_settings()
    assert s.path(s.contract_path) == PROJECT_ROOT / "configs" / "fraud" / "dataset.yaml"
    assert s.contract.name == "card_fraud"


def test_a_rollout_sticky_column_the_contract_lacks_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_SERVING__ROLLOUT__STICKY_COLUMN", "card_id")
    with pytest.raises(SettingsError, match=r"serving\.rollout\.sticky_column = 'card_id': not a column .*amount"):
        load_settings()


def test_rollout_mode_off_unquoted_in_yaml_reads_as_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overlay = tmp_path / "rollout.yaml"
    overlay.write_text("serving:\n  rollout:\n    mode: off\n")
    monkeypatch.setenv("MLOPS_CONFIG", f"configs/settings.yaml,configs/fraud/settings.yaml,{overlay}")
    assert load_settings().serving.rollout.mode == "off"
