"""What the whole-loop tests share: the loop's small settings, `prefect deployment run` as a user types it,
and `make prod-local` started for a test and stopped after it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from core.servers import VENV_BIN
from core.settings import PROJECT_ROOT
from deploy.prodlocal import ProdLocal, load


def loop_env() -> dict[str, str]:
    """The whole loop on the demo's small simulated data, with short tuning and polls (imported here, so
    that this module works without the demo package)."""
    from demo.loop import SMALL_DATA

    return {
        **SMALL_DATA,
        "MLOPS_TUNING__RETRAIN_TRIALS": "2",
        "MLOPS_SERVING__RELOAD_INTERVAL_S": "2",
        "MLOPS_MONITORING__MIN_WINDOW_ROWS": "500",
        "MLOPS_MONITORING__MIN_LABELLED_ROWS": "200",
    }


def deployment_run(env: Mapping[str, str], name: str, *params: str, timeout: float = 600) -> str:
    """`prefect deployment run NAME --watch`, as a user types it; returns the output."""
    cmd = [str(VENV_BIN / "prefect"), "deployment", "run", name, "--watch", "--watch-timeout", str(int(timeout))]
    for p in params:
        cmd += ["--param", p]
    out = subprocess.run(
        cmd, env=dict(env), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout + 60, check=False
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"{name} failed:\n{text[-4000:]}"
    assert "Completed" in text, f"{name} did not complete:\n{text[-4000:]}"
    return text


def outside_settings() -> dict[str, str]:
    """This process's environment without the test run's own settings (MLOPS_*, MLFLOW_*, PREFECT_API*)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_", "PREFECT_API"))}


@contextlib.contextmanager
def prod_local(
    state: Path, env: Mapping[str, str], *, deployments: bool, scrape_interval: str = "1s"
) -> Iterator[tuple[ProdLocal, str]]:
    """`python -m deploy.prodlocal` (what `make prod-local` runs) with databases of its own, stopped and
    dropped afterwards. Yields the stack and what it printed."""
    cli = [sys.executable, "-m", "deploy.prodlocal", "--state", str(state)]
    full_env = {**outside_settings(), **env}
    args = ["--db-prefix", f"mlops_pl_{uuid.uuid4().hex[:8]}_", "--scrape-interval", scrape_interval]
    if not deployments:
        args.append("--no-deployments")
    started = subprocess.run(
        [*cli, *args], env=full_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        stack = load(state)
        assert stack is not None
        yield stack, started.stdout
    finally:
        subprocess.run([*cli, "--stop", "--drop-databases"], env=full_env, cwd=PROJECT_ROOT, timeout=120, check=False)


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """This process sees only `env`'s settings (as a client given prod-local's printed exports would)."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(("MLOPS_", "MLFLOW_", "PREFECT_API"))]:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
