"""The local stack: MLflow server, Prefect server and worker, the deployments, the API.

`up` starts what is not already running (a component whose recorded process is alive and whose
health URL answers is reused), `down` stops every process it started. What runs where is recorded
in <state>/stack/stack.json, so `make stop` works from another shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from pydantic import SecretStr

from core.registry.webhooks import WebhookSetupError, ensure_alias_webhook
from core.servers import (
    Server,
    port_open,
    prefect_env,
    process_alive,
    register_deployments,
    start_api,
    start_mlflow,
    start_prefect,
    start_together,
    start_worker,
    stop_in_phases,
    wait_http,
)
from core.settings import PROJECT_ROOT, Settings, get_settings

Progress = Callable[[str], None]
# The API and the worker stop first, then the servers they talk to.
STOP_PHASES = (("api", "worker"), ("prefect", "mlflow"))


@dataclass
class Component:
    pid: int
    url: str
    log: str


@dataclass
class Stack:
    components: dict[str, Component] = field(default_factory=dict)

    @property
    def mlflow_url(self) -> str:
        return self.components["mlflow"].url

    @property
    def prefect_api_url(self) -> str:
        return self.components["prefect"].url + "/api"

    @property
    def api_url(self) -> str | None:
        api = self.components.get("api")
        return api.url if api else None


def _state_file(settings: Settings) -> Path:
    return settings.state / "stack" / "stack.json"


def load(settings: Settings | None = None) -> Stack:
    path = _state_file(settings or get_settings())
    if not path.exists():
        return Stack()
    raw = json.loads(path.read_text())
    return Stack({k: Component(**v) for k, v in raw.items()})


def _save(settings: Settings, stack: Stack) -> None:
    path = _state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: asdict(v) for k, v in stack.components.items()}, indent=2))
    tmp.replace(path)


def _healthy(c: Component | None, health_path: str) -> bool:
    if c is None or not process_alive(c.pid):
        return False
    try:
        wait_http(c.url + health_path, timeout=3)
    except (TimeoutError, RuntimeError):
        return False
    return True


def env_for_flows(settings: Settings, stack: Stack) -> dict[str, str]:
    """What every flow run, the worker and the API see: one tracking server, one Prefect API."""
    env = prefect_env(stack.prefect_api_url, settings.state / "prefect-home")
    env |= {
        "MLOPS_MLFLOW_TRACKING_URI": stack.mlflow_url,
        "MLFLOW_TRACKING_URI": stack.mlflow_url,
        "MLOPS_STATE_DIR": str(settings.state),
        "MLOPS_PROJECT_ROOT": str(PROJECT_ROOT),
        "MPLBACKEND": "Agg",
    }
    if "MLOPS_CONFIG" in os.environ:
        env["MLOPS_CONFIG"] = os.environ["MLOPS_CONFIG"]
    return env


def _check_port_free(name: str, port: int) -> None:
    if port_open(port):
        raise RuntimeError(
            f"port {port} for {name} is taken by a process this stack did not start; "
            f"stop it or set MLOPS_STACK__{name.upper()}_PORT to another port"
        )


def up_servers(settings: Settings, say: Progress = print) -> Stack:
    """MLflow and Prefect servers, the work pool, the deployments and a worker."""
    stack = load(settings)
    logs = settings.state / "logs"
    home = settings.state / "prefect-home"

    # Both servers start at once (each spends seconds importing before it listens), as prod-local's do.
    starts: dict[str, Callable[[], Server]] = {}
    if _healthy(stack.components.get("mlflow"), "/health"):
        say(f"MLflow server already running at {stack.mlflow_url}")
    else:
        _check_port_free("mlflow", settings.stack.mlflow_port)
        say("starting the MLflow tracking server (SQLite backend, local artifacts) ...")
        backend = f"sqlite:///{settings.state / 'mlflow' / 'mlflow.db'}"
        starts["mlflow"] = partial(
            start_mlflow, backend, settings.mlflow_artifacts_dir, logs / "mlflow.log", settings.stack.mlflow_port
        )
    if _healthy(stack.components.get("prefect"), "/api/health"):
        say(f"Prefect server already running at {stack.components['prefect'].url}")
    else:
        _check_port_free("prefect", settings.stack.prefect_port)
        say("starting the Prefect server ...")
        starts["prefect"] = partial(start_prefect, home, logs / "prefect.log", settings.stack.prefect_port)

    def started(name: str, srv: Server) -> None:  # recorded at once, so that `make stop` stops it
        stack.components[name] = Component(srv.proc.pid, srv.url, str(srv.log))
        _save(settings, stack)

    start_together(starts, started)

    say("registering the deployments from prefect.yaml ...")
    pool = settings.stack.work_pool
    register_deployments(env_for_flows(settings, stack), pool, PROJECT_ROOT)

    worker = stack.components.get("worker")
    if worker and process_alive(worker.pid):
        say("Prefect worker already running")
    else:
        say(f"starting a process worker on pool '{pool}' ...")
        proc = start_worker(
            stack.prefect_api_url, home, pool, logs / "worker.log", PROJECT_ROOT, env=env_for_flows(settings, stack)
        )
        # The worker inherits the tracking URI and state dir, and so do the flow runs it starts.
        stack.components["worker"] = Component(proc.pid, "", str(logs / "worker.log"))
        _save(settings, stack)
    return stack


def up_api(settings: Settings, stack: Stack, say: Progress = print, timeout: float = 120) -> Stack:
    """The prediction service, serving the registry's champion (needs one to be ready)."""
    api = stack.components.get("api")
    if _healthy(api, "/ready"):
        say(f"API already running at {stack.api_url}")
        return stack
    _check_port_free("serving", settings.serving.port)
    say("starting the prediction API (uvicorn) ...")
    log = settings.state / "logs" / "api.log"
    env = {k: v for k, v in env_for_flows(settings, stack).items() if not k.startswith("PREFECT_")}
    # The registry tells the API when the champion moves (a signed webhook), instead of the API noticing
    # at its next poll; a secret of the stack's own unless the settings name one.
    secret = settings.serving.webhook_secret
    env["MLOPS_SERVING__WEBHOOK_SECRET"] = secret.get_secret_value() if secret else secrets.token_urlsafe(24)
    server = start_api(env, log, settings.serving.port, timeout=timeout)
    stack.components["api"] = Component(server.proc.pid, server.url, str(log))
    _save(settings, stack)
    serving = settings.serving.model_copy(update={"webhook_secret": SecretStr(env["MLOPS_SERVING__WEBHOOK_SECRET"])})
    hooked = settings.model_copy(update={"serving": serving, "mlflow_tracking_uri": stack.mlflow_url})
    try:
        ensure_alias_webhook(hooked, f"{server.url}/webhooks/mlflow")
        say(f"registry webhook -> {server.url}/webhooks/mlflow (alias moves reach the API at once)")
    except WebhookSetupError as exc:  # the poll still follows the alias
        say(f"no registry webhook ({exc}); the API polls every {settings.serving.reload_interval_s:g}s")
    return stack


def down(settings: Settings | None = None, say: Progress = print) -> list[str]:
    """Stop every process the stack started, newest first."""
    settings = settings or get_settings()
    stack = load(settings)
    phases = [
        {n: stack.components[n].pid for n in phase if n in stack.components and process_alive(stack.components[n].pid)}
        for phase in STOP_PHASES
    ]
    stopped = stop_in_phases(phases, say)
    for name in {n for phase in STOP_PHASES for n in phase}:
        stack.components.pop(name, None)
    _save(settings, stack)
    return stopped


@contextlib.contextmanager
def temporary(
    state_dir: Path, env: dict[str, str] | None = None, say: Progress = print
) -> Iterator[tuple[Settings, Stack]]:
    """A whole stack in its own state directory on free ports, torn down (and env restored) on exit.

    For tests and benchmarks: this process, the worker and the API all see `env` and the stack's
    locations; nothing is left running afterwards.
    """
    from core.servers import free_port

    overrides = {
        "MLOPS_STATE_DIR": str(state_dir),
        "MLOPS_STACK__MLFLOW_PORT": str(free_port()),
        "MLOPS_STACK__PREFECT_PORT": str(free_port()),
        "MLOPS_SERVING__PORT": str(free_port()),
        **(env or {}),
    }
    saved = dict(os.environ)
    os.environ.update(overrides)
    settings = get_settings()
    try:
        stack = up_servers(settings, say=say)
        os.environ.update(env_for_flows(settings, stack))
        yield get_settings(), stack
    finally:
        down(settings, say=say)
        os.environ.clear()
        os.environ.update(saved)
