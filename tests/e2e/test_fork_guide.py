"""docs/fork-guide.md, step 4, run exactly as written: another dataset through configs only.

The commands are read from the guide's walk-through block, so the guide and this test cannot
drift apart. `mlops run ...` lines run as subprocesses, `python -m serving &` starts the API on a
free port, and the `curl` line is sent with httpx to that API.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import httpx
import pytest

from core.servers import free_port, spawn, stop_process_group, wait_http
from core.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow

GUIDE = PROJECT_ROOT / "docs" / "fork-guide.md"


def walkthrough() -> list[str]:
    text = GUIDE.read_text()
    block = re.search(r"<!-- walkthrough:start -->\s*```bash\n(.*?)```\s*<!-- walkthrough:end -->", text, re.S)
    assert block, "docs/fork-guide.md lost its walk-through block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_walkthrough_runs_as_written(tmp_path: Path, mlflow_server: str) -> None:
    env = {
        **os.environ,
        "MLOPS_STATE_DIR": str(tmp_path / "state"),
        "MLOPS_MLFLOW_TRACKING_URI": mlflow_server,
        "MLOPS_SERVING__PORT": str(free_port()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    api = None
    try:
        for line in walkthrough():
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").partition("=")
                env[key] = value
            elif line.startswith(".venv/bin/mlops "):
                out = subprocess.run(
                    shlex.split(line),
                    env=env,
                    cwd=PROJECT_ROOT,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
                assert out.returncode == 0, f"`{line}` failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            elif line.endswith("-m serving &"):
                log = tmp_path / "api.log"
                proc = spawn("api", shlex.split(line.removesuffix("&")), log, env, cwd=PROJECT_ROOT)
                api = proc
                wait_http(f"http://127.0.0.1:{env['MLOPS_SERVING__PORT']}/ready", 120, proc, log)
            elif line.startswith("curl "):
                body_file = re.search(r"-d @(\S+)", line)
                assert body_file
                record = json.loads((PROJECT_ROOT / body_file.group(1)).read_text())
                resp = httpx.post(f"http://127.0.0.1:{env['MLOPS_SERVING__PORT']}/predict", json=record, timeout=30)
                assert resp.status_code == 200, resp.text
                body = resp.json()
                assert body["model_name"] == "breast-cancer"
                assert body["model_version"] == "1"
                [pred] = body["predictions"]
                assert pred["prediction"] in (0, 1)
                assert set(pred["probabilities"]) == {"0", "1"}
            else:
                pytest.fail(f"the test does not know how to run the guide's line: {line}")
        assert api is not None, "the walk-through never started the API"
        # The API's request model comes from the breast-cancer contract, not the fraud one.
        schema = httpx.get(f"http://127.0.0.1:{env['MLOPS_SERVING__PORT']}/openapi.json", timeout=10).json()
        fields = json.dumps(schema)
        assert "mean_radius" in fields and "amount" not in fields
    finally:
        if api is not None:
            stop_process_group(api.pid)
