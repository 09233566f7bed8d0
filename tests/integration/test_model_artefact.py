"""A registered model is self-contained: outside this checkout, in a fresh virtual environment built only
from the model's own requirements, `mlflow.pyfunc.load_model` loads it and predicts what the project does.

The Pipeline holds the project's own time-feature transformer; the artefact carries that module as MLflow
code_paths (core/registry/artefact.py), so any consumer of the registry can use the model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.read_parquet(sys.argv[2]))
import core.modeling.features as f
print(json.dumps({"proba": [list(map(float, row)) for row in out], "features_from": f.__file__}))
"""


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv is not installed: `make install` installs it")
    return found


def test_a_registered_model_loads_and_predicts_in_a_fresh_environment(tmp_path: Path, private_registry: None) -> None:
    import mlflow

    from core.settings import load_settings
    from serving.example_model import labelled_frame, register_example_model

    contract = load_settings().contract
    assert contract.time_feature_columns, "the fraud contract derives time features: the case this test is for"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    path_before = list(sys.path)
    version = register_example_model(contract, "portable", n_rows=500, alias=None)
    assert sys.path == path_before, "logging a model left MLflow's code folder on sys.path"
    local = Path(mlflow.artifacts.download_artifacts(f"models:/portable/{version}", dst_path=str(tmp_path / "model")))
    requirements = (local / "requirements.txt").read_text().split()
    assert any(r.startswith("scikit-learn==") for r in requirements)
    assert (local / "code" / "core" / "modeling" / "features.py").exists()

    X, _ = labelled_frame(contract, 20, seed=5)
    expected = mlflow.sklearn.load_model(str(local)).predict_proba(X)
    X.to_parquet(tmp_path / "rows.parquet")  # keeps the dtypes the model's signature declares

    venv = tmp_path / "fresh"
    uv = _uv()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    base_python = getattr(sys, "_base_executable", sys.executable)
    # uv runs outside the checkout: the project's own uv settings (compile-bytecode, ~25 CPU-seconds over the
    # whole environment for one interpreter start) are not what a consumer of the registry has.
    subprocess.run(
        [uv, "venv", "--quiet", "--python", base_python, str(venv)], check=True, env=env, timeout=120, cwd=tmp_path
    )
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            "-r",
            str(local / "requirements.txt"),
        ],
        check=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", SCRIPT, str(local), str(tmp_path / "rows.parquet")],
        cwd=elsewhere,
        env={**env, "MLFLOW_TRACKING_URI": tracking},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The transformer came from the model's own code, not from this checkout.
    assert str(local) in result["features_from"], result["features_from"]
    # pyfunc casts inputs to the logged signature before the Pipeline sees them (rows with nulls differ in the
    # last digits); the tolerance is the one serving's parity check uses.
    np.testing.assert_allclose(np.array(result["proba"]), expected, atol=1e-4)
