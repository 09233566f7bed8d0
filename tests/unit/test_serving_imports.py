"""The serving process imports what it needs to predict: not the orchestrator, the drift library or mlflow."""

from __future__ import annotations

import json
import subprocess
import sys

from core.settings import PROJECT_ROOT


def test_serving_app_imports_neither_prefect_nor_evidently() -> None:
    code = (
        "import json, sys; import serving.app, serving.__main__; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    loaded = set(json.loads(run.stdout))
    assert "fastapi" in loaded  # the check itself works
    # prefect and evidently are banned outright; mlflow and skl2onnx are only imported when needed
    # (a non-HTTP registry, an ONNX conversion) so that start-up stays fast.
    assert not loaded & {"prefect", "evidently", "pipelines", "monitoring", "mlflow", "skl2onnx"}


def test_no_serving_module_imports_the_orchestrator_or_the_drift_library() -> None:
    """Every module under serving/, routes included, imported in one fresh process."""
    modules = sorted(
        ".".join(p.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (PROJECT_ROOT / "serving").rglob("*.py")
    )
    assert "serving.routes.predictions" in modules  # the glob reaches into subpackages
    code = (
        f"import importlib, json, sys; [importlib.import_module(m) for m in {modules!r}]; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    loaded = set(json.loads(run.stdout))
    assert "serving" in loaded
    assert not loaded & {"prefect", "evidently", "pipelines", "monitoring"}


def test_skipping_dev_modules_at_serve_start_keeps_the_trusted_types() -> None:
    """serving.__main__ marks pytest and dask absent; skops must still trust the same scikit-learn types."""
    code = (
        "import json, sys{pre}; import serving.app, skops.io._trusted_types as t; "
        "print(json.dumps(sorted(t.SKLEARN_ESTIMATOR_TYPE_NAMES)))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code.format(pre=pre)], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True
        ).stdout
        for pre in ("", "; import serving.__main__")
    ]
    plain, lean = (json.loads(r) for r in runs)
    assert len(plain) > 150
    assert lean == plain
