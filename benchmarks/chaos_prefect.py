"""The chaos scenarios that need the orchestrator: a retraining run killed half-way, a Prefect restart.

Both start the local stack of `make demo` (demo.stack.up_servers: MLflow server, Prefect server,
the deployments of prefect.yaml, a process worker) in their own state directory on free ports, with
small simulated data, and stop it afterwards (demo.stack.down).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from benchmarks.chaos_support import ScenarioResult, env_vars, say, wait_until
from core.servers import VENV_BIN, free_port, start_prefect, stop_process_group
from core.settings import PROJECT_ROOT, Settings, get_settings
from demo.loop import SMALL_DATA

if TYPE_CHECKING:
    from benchmarks.chaos_support import Context

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# The scheduler checks deployments every 5 s instead of 60, and the worker polls every 2 s instead
# of 10: the scenarios wait for scheduled runs, and these only shorten the waits.
FAST_LOOPS = {
    "PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
    "PREFECT_WORKER_QUERY_SECONDS": "2",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


@contextlib.contextmanager
def local_stack(root: Path) -> Iterator[tuple[Settings, Any]]:
    """`make demo`'s servers, deployments and worker, in `root`; everything stopped on exit."""
    from demo import stack as st

    env = {
        **SMALL_DATA,
        **FAST_LOOPS,
        "MLOPS_STATE_DIR": str(root / "state"),
        "MLOPS_ENVIRONMENT": "test",
        "MLOPS_STACK__MLFLOW_PORT": str(free_port()),
        "MLOPS_STACK__PREFECT_PORT": str(free_port()),
    }
    with env_vars(env):
        settings = get_settings()
        try:
            stack = st.up_servers(settings, say=say)
            with env_vars(st.env_for_flows(settings, stack)):
                yield get_settings(), stack
        finally:
            st.down(settings, say=say)


# ---- Prefect REST calls ------------------------------------------------------------------------
def _api(stack: Any) -> str:
    return str(stack.prefect_api_url)


def deployment_id(stack: Any, name: str) -> str:
    flow, deployment = name.split("/")
    r = httpx.get(f"{_api(stack)}/deployments/name/{flow}/{deployment}", timeout=10)
    r.raise_for_status()
    return str(r.json()["id"])


def start_run(stack: Any, name: str, parameters: dict[str, Any] | None = None) -> str:
    r = httpx.post(
        f"{_api(stack)}/deployments/{deployment_id(stack, name)}/create_flow_run",
        json={"parameters": parameters or {}},
        timeout=10,
    )
    r.raise_for_status()
    return str(r.json()["id"])


def run_state(stack: Any, run_id: str) -> str:
    r = httpx.get(f"{_api(stack)}/flow_runs/{run_id}", timeout=10)
    r.raise_for_status()
    return str((r.json().get("state") or {}).get("type", ""))


def wait_final(stack: Any, run_id: str, timeout: float) -> str:
    """The final state type of a flow run, or its last state when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            state = run_state(stack, run_id)
            if state in FINAL:
                return state
        time.sleep(1.0)
    return state or "UNKNOWN"


def deployment_runs(stack: Any, name: str) -> list[dict[str, Any]]:
    body = {"deployments": {"id": {"any_": [deployment_id(stack, name)]}}, "sort": "EXPECTED_START_TIME_ASC"}
    r = httpx.post(f"{_api(stack)}/flow_runs/filter", json=body, timeout=10)
    r.raise_for_status()
    return list(r.json())


def champion(settings: Settings) -> str | None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    try:
        return str(client.get_model_version_by_alias(settings.model_name, "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


# ---- retraining killed half-way -----------------------------------------------------------------
def _training_started(settings: Settings, after_ms: int) -> bool:
    """A training run of the experiment is in progress: collect and preprocess are behind us."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is None:
        return False
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and attributes.start_time > {after_ms}",
    )
    return bool(runs)


def _flow_run_processes(worker_pid: int, run_id: str) -> list[psutil.Process]:
    """The process running `run_id`: the worker's child whose environment names it."""
    found = []
    for proc in psutil.Process(worker_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == run_id:
                found.append(proc)
    return found


def retraining_killed(ctx: Context, *, timeout_s: float = 900) -> ScenarioResult:
    """Retrain once (the champion), start again, SIGKILL the run's process once training has begun;
    the champion must not move, Prefect must mark the run crashed, and a retry must complete."""
    res = ScenarioResult("retraining_killed")
    root = ctx.work / "retraining_killed"
    root.mkdir(parents=True, exist_ok=True)
    with local_stack(root) as (settings, stack):
        first = start_run(stack, "retrain/retrain", {"reason": "chaos: first model"})
        state = wait_final(stack, first, timeout_s)
        before = champion(settings)
        res.detail["first_run"] = {"state": state, "champion": before}
        if not res.expect(state == "COMPLETED" and before is not None, f"the first retraining ended {state}"):
            return res

        started_ms = int(time.time() * 1000)
        victim = start_run(stack, "retrain/retrain", {"reason": "chaos: killed half-way"})
        midway = wait_until(lambda: _training_started(settings, started_ms), timeout_s, interval=0.5)
        res.detail["killed_after_s"] = round(time.time() - started_ms / 1000, 1)  # training had begun
        if not res.expect(bool(midway), "the second run never reached training"):
            return res
        worker_pid = stack.components["worker"].pid
        procs = _flow_run_processes(worker_pid, victim)
        res.expect(bool(procs), "could not find the flow run's process under the worker")
        for proc in procs:
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(signal.SIGKILL)
        killed_state = wait_final(stack, victim, 120)
        after_kill = champion(settings)
        res.detail["killed_run"] = {"state": killed_state, "pids": [p.pid for p in procs], "champion": after_kill}
        res.expect(killed_state in {"CRASHED", "FAILED", "CANCELLED"}, f"the killed run is {killed_state}, not failed")
        res.expect(after_kill == before, f"the champion moved from v{before} to v{after_kill} after the kill")
        res.expect(psutil.pid_exists(worker_pid), "the worker died with its flow run")

        retry = start_run(stack, "retrain/retrain", {"reason": "chaos: retry"})
        retry_state = wait_final(stack, retry, timeout_s)
        res.detail["retry"] = {"state": retry_state, "champion": champion(settings)}
        res.expect(retry_state == "COMPLETED", f"the retry ended {retry_state}")
        res.requests = 3  # flow runs started
        res.failures = 0 if retry_state == "COMPLETED" else 1  # the kill is the injected fault, not a failure
    return res


# ---- Prefect server restarted ---------------------------------------------------------------------
def _schedule_every(stack: Any, name: str, seconds: int) -> None:
    env = {**os.environ, "PREFECT_API_URL": _api(stack)}
    cmd = [str(VENV_BIN / "prefect"), "deployment", "schedule", "create", name, "--interval", str(seconds)]
    out = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"could not schedule {name}: {out.stdout[-1000:]} {out.stderr[-1000:]}")


def _completed_scheduled_after(stack: Any, name: str, after: datetime) -> list[dict[str, Any]]:
    done = []
    for run in deployment_runs(stack, name):
        started = run.get("start_time")
        if (
            run.get("auto_scheduled")
            and (run.get("state") or {}).get("type") == "COMPLETED"
            and started
            and datetime.fromisoformat(started) > after
        ):
            done.append(run)
    return done


def prefect_restart(
    ctx: Context, *, interval_s: int = 20, down_s: float = 30.0, timeout_s: float = 300
) -> ScenarioResult:
    """Monitoring on a short interval schedule; the Prefect server is stopped for `down_s` (a scheduled
    slot falls inside) and started again on the same port and database; a scheduled monitoring run
    must then complete, picked up by the same worker."""
    res = ScenarioResult("prefect_restart")
    root = ctx.work / "prefect_restart"
    root.mkdir(parents=True, exist_ok=True)
    with local_stack(root) as (settings, stack):
        name = "monitor/monitor"
        _schedule_every(stack, name, interval_s)
        t0 = datetime.now(UTC)
        before = wait_until(lambda: _completed_scheduled_after(stack, name, t0), timeout_s, interval=2)
        res.detail["completed_before_restart"] = len(before or [])
        if not res.expect(bool(before), "no scheduled monitoring run completed before the restart"):
            return res

        prefect = stack.components["prefect"]
        port = int(prefect.url.rsplit(":", 1)[1])
        stop_process_group(prefect.pid)
        stopped = time.monotonic()
        time.sleep(down_s)
        home = settings.state / "prefect-home"
        server = start_prefect(home, Path(prefect.log), port)
        stack.components["prefect"].pid = server.proc.pid
        from demo.stack import _save  # the stack file must name the new server, or `down` misses it

        _save(settings, stack)
        restarted = datetime.now(UTC)
        res.detail["down_s"] = round(time.monotonic() - stopped, 1)
        res.expect(psutil.pid_exists(stack.components["worker"].pid), "the worker did not survive the outage")
        after = wait_until(lambda: _completed_scheduled_after(stack, name, restarted), timeout_s, interval=2)
        res.detail["resumed_after_s"] = (
            round((datetime.fromisoformat(after[0]["start_time"]) - restarted).total_seconds(), 1) if after else None
        )
        res.expect(bool(after), f"no scheduled monitoring run completed within {timeout_s:.0f}s of the restart")
        runs = deployment_runs(stack, name)
        states: dict[str, int] = {}
        for run in runs:
            st = (run.get("state") or {}).get("type", "")
            states[st] = states.get(st, 0) + 1
        res.detail["monitor_runs_by_state"] = states
        res.requests = sum(n for st, n in states.items() if st in FINAL)
        res.failures = sum(n for st, n in states.items() if st in {"FAILED", "CRASHED"})
    return res
