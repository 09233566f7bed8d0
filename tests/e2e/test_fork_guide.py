"""docs/fork-guide.md, step 3, run exactly as written, in a copy of the project without the fraud demo.

The copy holds the tracked files minus `demo/` and `configs/fraud/`: a fork can delete the demo and the
guide still works. The commands are read from the guide's walk-through block, so the guide and this test
cannot drift apart: `mlops ...` lines run as subprocesses, `python -m serving &` starts the API on a free
port, and the `curl` line is sent with httpx to that API. Every project module outside the demo must also
import in the copy.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from core.servers import free_port, spawn, start_mlflow, stop_process_group, wait_http
from core.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow

GUIDE = PROJECT_ROOT / "docs" / "fork-guide.md"
DEMO_ONLY = ("demo/", "configs/fraud/")


def walkthrough() -> list[str]:
    text = GUIDE.read_text()
    block = re.search(r"<!-- walkthrough:start -->\s*```bash\n(.*?)```\s*<!-- walkthrough:end -->", text, re.S)
    assert block, "docs/fork-guide.md lost its walk-through block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def copy_without_demo(dest: Path) -> Path:
    """The tracked files minus the demo, and a `.venv` that runs them with the project's installed packages
    (and nothing of this checkout: its editable install would bring the demo back)."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for rel in files:
        if rel.startswith(DEMO_ONLY) or not (PROJECT_ROOT / rel).exists():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / rel, target)
    venv = dest / ".venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True)  # fmt: skip
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    # A plain path in a .pth file adds that folder only: the .pth files inside it (the checkout's editable
    # install among them) are not read.
    (site / "project.pth").write_text(f"{dest}\n{sysconfig.get_paths()['purelib']}\n")
    mlops = venv / "bin" / "mlops"
    mlops.write_text(f"#!{venv / 'bin' / 'python'}\nfrom pipelines.cli import app\napp(prog_name='mlops')\n")
    mlops.chmod(0o755)
    return dest


def test_every_module_outside_the_demo_imports_without_it(tmp_path: Path) -> None:
    root = copy_without_demo(tmp_path / "fork")
    modules = [
        ".".join(p.relative_to(root).with_suffix("").parts)
        for package in ("core", "pipelines", "serving", "monitoring")
        for p in sorted((root / package).rglob("*.py"))
        if p.name != "__main__.py"
    ]
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m.removesuffix('.__init__'))"
    out = subprocess.run(
        [str(root / ".venv" / "bin" / "python"), "-c", code, *modules],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    gone = subprocess.run(
        [str(root / ".venv" / "bin" / "python"), "-c", "import demo"], cwd=root, capture_output=True, check=False
    )
    assert gone.returncode != 0, "the copy still imports the demo from somewhere"


def test_walkthrough_runs_as_written_without_the_demo(tmp_path: Path) -> None:
    """As a forker starts: an empty registry of their own, and a shell with none of this run's settings
    (no MLOPS_* or MLFLOW_* variable of an earlier test reaches the guide's commands)."""
    root = copy_without_demo(tmp_path / "fork")
    registry = start_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", tmp_path / "mlflow.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_"))}
    env.update(
        {
            "MLOPS_STATE_DIR": str(tmp_path / "state"),
            "MLOPS_MLFLOW_TRACKING_URI": registry.url,
            "MLOPS_SERVING__PORT": str(free_port()),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    api = None
    try:
        for line in walkthrough():
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").partition("=")
                env[key] = value
            elif line.startswith(".venv/bin/mlops "):
                out = subprocess.run(
                    shlex.split(line), env=env, cwd=root, capture_output=True, text=True, timeout=600, check=False
                )
                assert out.returncode == 0, f"`{line}` failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
                assert "Traceback" not in out.stderr, out.stderr[-3000:]
            elif line.endswith("-m serving &"):
                log = tmp_path / "api.log"
                api = spawn("api", shlex.split(line.removesuffix("&")), log, env, cwd=root)
                wait_http(f"http://127.0.0.1:{env['MLOPS_SERVING__PORT']}/ready", 120, api, log)
            elif line.startswith("curl "):
                body_file = re.search(r"-d @(\S+)", line)
                assert body_file
                record = json.loads((root / body_file.group(1)).read_text())
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
        assert (root / "configs" / "breast_cancer" / "dataset.yaml").exists()  # what `contract init` wrote
        # The API's request model comes from the breast-cancer contract, not the fraud one.
        schema = httpx.get(f"http://127.0.0.1:{env['MLOPS_SERVING__PORT']}/openapi.json", timeout=10).json()
        fields = json.dumps(schema)
        assert "mean_radius" in fields and "amount" not in fields
    finally:
        if api is not None:
            stop_process_group(api.pid)
        registry.stop()
