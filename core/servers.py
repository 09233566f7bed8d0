"""Start and stop the real local servers (MLflow, Prefect, the API) as child processes.

Used by `make demo` and by the test suite, so that both run the same commands. Servers bind to
127.0.0.1 only.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

HOST = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (a zombie counts until it is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and someone else's
        return True
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Wait until `url` answers 2xx; fail early with the log tail if the process died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process for {url} exited with {proc.returncode} before it was ready:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if 200 <= r.status < 300:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s ({last}):\n{tail}")


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 15) -> None:
        stop_process_group(self.proc.pid, timeout)


def stop_process_group(pid: int, timeout: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `timeout` seconds."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # reap our own child: no zombie left behind
                os.waitpid(pid, os.WNOHANG)
            if not _group_running(pgid):
                return
            time.sleep(0.05)


def stop_in_phases(phases: Sequence[Mapping[str, int]], say: Callable[[str], None] = lambda line: None) -> list[str]:
    """Stop process groups (name -> pid) phase by phase, the groups of one phase at once; the names stopped.

    A stack's front (the API, the worker) goes in the first phase and what it talks to (servers, stores) in
    a later one, so nothing in flight loses its back end; within a phase nothing waits for another.
    """
    stopped: list[str] = []
    for phase in phases:
        for name, pid in phase.items():
            say(f"stopping {name} (pid {pid})")
        with concurrent.futures.ThreadPoolExecutor(max(1, len(phase))) as pool:
            list(pool.map(stop_process_group, phase.values()))
        stopped += phase
    return stopped


def _group_running(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running. A member that has exited but is not reaped yet
    (a zombie) does not count: a stack's servers are orphans once the process that started them exits,
    and init reaps them only every second or so, which made every stop wait a second or two."""
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):  # gone meanwhile
            continue
    return False


# Every server and flow run this project starts has usage reporting off, unless the user's environment says
# otherwise: Evidently's UI and MLflow send usage events to their vendors' endpoints by default (seen here:
# `evidently ui` posting each project listing), as Prefect would without PREFECT_SERVER_ANALYTICS_ENABLED.
NO_USAGE_REPORTING = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


def spawn(
    name: str, cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**NO_USAGE_REPORTING, **os.environ, **(env or {})}
    with log.open("ab") as fh:
        return subprocess.Popen(
            list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True
        )


WEBHOOK_CACHE_TTL_S = 5


def start_together(
    starts: Mapping[str, Callable[[], Server]], started: Callable[[str, Server], None] = lambda name, server: None
) -> dict[str, Server]:
    """Start several servers at once (each spends seconds importing before it listens).

    `started(name, server)` is called, in this thread, for every server that came up, also when another
    failed, so that the caller records it and can stop it; the first failure is raised once all are done.
    """
    servers: dict[str, Server] = {}
    failed: list[BaseException] = []
    with concurrent.futures.ThreadPoolExecutor(max(1, len(starts))) as pool:
        futures = {name: pool.submit(start) for name, start in starts.items()}
        for name, future in futures.items():
            try:
                servers[name] = future.result()
            except Exception as exc:
                failed.append(exc)
                continue
            started(name, servers[name])
    if failed:
        raise failed[0]
    return servers


def start_mlflow(
    backend_uri: str,
    artifacts_dir: Path | str,
    log: Path,
    port: int | None = None,
    timeout: float = 180,
    *,
    env: Mapping[str, str] | None = None,
) -> Server:
    """`mlflow server` with one worker and no job runner: a fraction of the default start-up cost.

    `artifacts_dir` is a local folder or an object-store URI (``s3://bucket/prefix``, with the store's
    endpoint and keys in `env`: MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    """
    port = port or free_port()
    if isinstance(artifacts_dir, Path):
        artifacts_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(VENV_BIN / "mlflow"), "server",
        "--host", HOST, "--port", str(port),
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts_dir),
        "--serve-artifacts", "--workers", "1",
    ]  # fmt: skip
    server_env = {
        **(env or {}),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # The registry webhook goes to the API on this machine (http://127.0.0.1:...), which MLflow's
        # protection against server-side request forgery refuses by default. Loopback stacks only.
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        # The server reads its webhook list at most this often (MLflow's default: 60 s, so a webhook
        # registered now would miss the alias moves of the next minute).
        "MLFLOW_WEBHOOK_CACHE_TTL": str(WEBHOOK_CACHE_TTL_S),
    }
    proc = spawn("mlflow", cmd, log, server_env)
    url = f"http://{HOST}:{port}"
    wait_http(f"{url}/health", timeout, proc, log)
    return Server("mlflow", url, proc, log)


def start_api(
    env: Mapping[str, str], log: Path, port: int | None = None, *, timeout: float = 120, wait_path: str = "/ready"
) -> Server:
    """`python -m serving` (the Dockerfile's command) on 127.0.0.1, waited for at `wait_path`.

    `env` carries the service's settings (MLOPS_*); the host and port are set here.
    """
    port = port or free_port()
    full_env = {**env, "MLOPS_SERVING__HOST": HOST, "MLOPS_SERVING__PORT": str(port)}
    root = Path(__file__).resolve().parents[1]
    proc = spawn("serving", [str(VENV_BIN / "python"), "-m", "serving"], log, full_env, cwd=root)
    url = f"http://{HOST}:{port}"
    try:
        wait_http(url + wait_path, timeout, proc, log)
    except BaseException:
        stop_process_group(proc.pid)
        raise
    return Server("serving", url, proc, log)


def start_evidently_ui(workspace: Path, log: Path, port: int | None = None, *, timeout: float = 120) -> Server:
    """`evidently ui` on the monitoring flow's workspace (monitoring/reports.py), on 127.0.0.1."""
    port = port or free_port()
    cmd = [str(VENV_BIN / "evidently"), "ui", "--workspace", str(workspace), "--host", HOST, "--port", str(port)]
    proc = spawn("evidently", cmd, log)
    url = f"http://{HOST}:{port}"
    try:
        wait_http(f"{url}/api/projects", timeout, proc, log)
    except BaseException:
        stop_process_group(proc.pid)
        raise
    return Server("evidently", url, proc, log)


def prefect_env(api_url: str, home: Path) -> dict[str, str]:
    return {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api_url,
    }


def start_prefect(
    home: Path, log: Path, port: int | None = None, timeout: float = 180, database_url: str | None = None
) -> Server:
    """`prefect server start`: a SQLite database under `home` (PREFECT_HOME) unless `database_url` is given."""
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    env = prefect_env(f"{url}/api", home)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    proc = spawn("prefect", cmd, log, env)
    wait_http(f"{url}/api/health", timeout, proc, log)
    return Server("prefect", url, proc, log)


def register_deployments(env: Mapping[str, str], pool: str, cwd: Path) -> None:
    """What deploy/prefect/deploy.sh does: the process work pool `pool` unless the server has it, then every
    deployment of prefect.yaml (`prefect deploy --all` in `cwd`). `env` holds PREFECT_API_URL.

    Whether the pool exists is asked over the server's REST API (GET /work_pools/{name}): a CLI process
    to ask it costs seconds of imports."""
    prefect = str(VENV_BIN / "prefect")
    run_env = {**os.environ, **env}
    try:
        with urllib.request.urlopen(f"{run_env['PREFECT_API_URL']}/work_pools/{pool}", timeout=30):
            exists = True
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        exists = False
    if not exists:
        subprocess.run(
            [prefect, "work-pool", "create", pool, "--type", "process"], env=run_env, check=True, capture_output=True
        )
    out = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"], env=run_env, cwd=cwd, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def start_worker(
    api_url: str, home: Path, pool: str, log: Path, cwd: Path, *, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A process worker: each flow run it picks up runs in a child process that inherits `env`.

    It asks the server for work every second (Prefect's default is 10 s): a local stack's server answers
    that easily, and `prefect deployment run` starts within a second instead of up to ten.
    """
    cmd = [str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    query = os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "1")  # a setting of the user's own wins
    worker_env = {"PREFECT_WORKER_QUERY_SECONDS": query, **(env or {}), **prefect_env(api_url, home)}
    return spawn("worker", cmd, log, worker_env, cwd=cwd)
