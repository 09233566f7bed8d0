"""Property-based requests generated from the live OpenAPI schema: whatever arrives, never a 5xx."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from core.servers import VENV_BIN
from tests.serving_support import ADMIN_KEY, register, serve, unique_model_name

pytestmark = pytest.mark.slow


def test_no_server_error_for_generated_requests(mlflow_server: str, tmp_path: Path) -> None:
    name = unique_model_name("fuzz")
    register(mlflow_server, name)
    with serve(mlflow_server, name, tmp_path) as svc:
        cmd = [
            str(VENV_BIN / "schemathesis"), "run", f"{svc.url}/openapi.json",
            "--checks", "not_a_server_error",
            "--max-examples", "25",  # per operation: ~200 requests over the 8 operations
            "--seed", "42",
            "--header", f"X-API-Key: {ADMIN_KEY}",
            "--request-timeout", "30",
            "--phases", "examples,coverage,fuzzing",
        ]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        report = run.stdout[-6000:] + run.stderr[-2000:]
        assert run.returncode == 0, report
        counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
        assert counts is not None and int(counts[1]) >= 200 and counts[1] == counts[2], report
        log = svc.log.read_text()
    assert "Traceback" not in log, log[-4000:]
