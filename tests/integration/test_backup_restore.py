"""docs/runbook.md's backup and restore, done as written against the real PostgreSQL at 127.0.0.1:5432:
pg_dump --format=custom of the MLflow database, the artifact store mirrored, both lost, pg_restore into an
empty database, the artifacts mirrored back; the registry reads back the same champion, tags, model card,
metrics and artifacts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.postgres import PG_HOST, PG_PORT, PG_USER, fresh_database, sqlalchemy_url

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def pg(tool: str, *args: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (Debian: postgresql-client)")
    cmd = [tool, "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_the_registry_restores_into_an_empty_database(tmp_path: Path, private_registry: None) -> None:
    bucket = tmp_path / "bucket"  # the artifact store, as the MLflow server's --artifacts-destination
    backup = tmp_path / "backup"
    backup.mkdir()
    with fresh_database("mlops_backup_src") as src:
        client = MlflowClient(tracking_uri=sqlalchemy_url(src), registry_uri=sqlalchemy_url(src))
        exp = client.create_experiment("orders", artifact_location=bucket.as_uri())
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "holdout_rmse", 3.25)
        (tmp_path / "MLmodel").write_text("flavors: {}\n")
        client.log_artifact(run.info.run_id, str(tmp_path / "MLmodel"), "model")
        client.set_terminated(run.info.run_id)
        client.create_registered_model("orders")
        for _ in range(2):
            mv = client.create_model_version("orders", f"{run.info.artifact_uri}/model", run.info.run_id)
        client.set_registered_model_alias("orders", "champion", mv.version)
        client.set_registered_model_alias("orders", "previous-champion", "1")
        client.set_model_version_tag("orders", mv.version, "decision", "promoted")
        client.update_model_version("orders", mv.version, description="# model card")

        # Backup as the runbook says: the database, then the bucket.
        pg("pg_dump", "--format=custom", "--file", str(backup / "mlflow.dump"), src)
        shutil.copytree(bucket, backup / "mlflow-artifacts")
    shutil.rmtree(bucket)  # the database was dropped on leaving the block: both are lost

    with fresh_database("mlops_backup_dst") as dst:
        pg("pg_restore", "--no-owner", "--exit-on-error", "-d", dst, str(backup / "mlflow.dump"))
        shutil.copytree(backup / "mlflow-artifacts", bucket)
        restored = MlflowClient(tracking_uri=sqlalchemy_url(dst), registry_uri=sqlalchemy_url(dst))
        champion = restored.get_model_version_by_alias("orders", "champion")
        assert str(champion.version) == str(mv.version) == "2"
        assert str(restored.get_model_version_by_alias("orders", "previous-champion").version) == "1"
        assert champion.tags["decision"] == "promoted" and champion.description == "# model card"
        assert restored.get_run(champion.run_id).data.metrics["holdout_rmse"] == 3.25
        local = restored.download_artifacts(champion.run_id, "model/MLmodel", str(tmp_path / "out"))
        assert Path(local).read_text() == "flavors: {}\n"
