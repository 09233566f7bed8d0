"""Helpers for the serving tests: register a model, run the real serve command, wait for it."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from core.servers import start_api
from core.settings import get_settings

ADMIN_KEY = "test-admin-key"


def unique_model_name(prefix: str = "serving-test") -> str:
    """The MLflow server is shared by the whole session: each module registers its own model name."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register(
    tracking_uri: str,
    model_name: str,
    family: str = "logistic",
    seed: int = 0,
    alias: str | None = "champion",
) -> str:
    import mlflow

    from serving.example_model import register_example_model

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)  # an earlier test may have pointed the registry elsewhere
    return register_example_model(
        get_settings().contract, model_name, family=family, seed=seed, n_rows=1_000, alias=alias
    )  # type: ignore[arg-type]


@dataclass
class Service:
    url: str
    port: int
    pid: int
    log: Path
    state: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


@contextlib.contextmanager
def serve(
    tracking_uri: str,
    model_name: str,
    state: Path,
    env: Mapping[str, str] | None = None,
    *,
    timeout: float = 120,
    wait_path: str = "/ready",
) -> Iterator[Service]:
    """`python -m serving` (the Dockerfile's command) on a free 127.0.0.1 port, stopped afterwards."""
    env = {
        "MLOPS_ENVIRONMENT": "test",
        "MLOPS_STATE_DIR": str(state),
        "MLOPS_MLFLOW_TRACKING_URI": tracking_uri,
        "MLOPS_MODEL_NAME": model_name,
        "MLOPS_ADMIN_API_KEY": ADMIN_KEY,
        "MLOPS_SERVING__LOG_FLUSH_S": "0.2",
        **(env or {}),
    }
    server = start_api(env, state / "serving.log", timeout=timeout, wait_path=wait_path)
    try:
        yield Service(server.url, int(server.url.rsplit(":", 1)[1]), server.proc.pid, server.log, state)
    finally:
        server.stop()


def record(**overrides: Any) -> dict[str, Any]:
    """A valid request record: the contract's examples."""
    contract = get_settings().contract
    out = {name: contract.column(name).example for name in contract.input_columns}
    out.update(overrides)
    return out


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def model_runtime(service: Service) -> str:
    return str(httpx.get(f"{service.url}/model", timeout=10).json()["runtime"])
