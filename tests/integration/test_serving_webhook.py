"""The registry webhook on a real MLflow server, into an API with two workers, on a non-fraud dataset.

The API polls the registry only every 10 minutes here, so a new champion answering within seconds can
only come from the push: MLflow posts `model_version_alias.created` (signed) to /webhooks/mlflow, the
worker that receives it nudges the other (serving/swaps.py), both load the new version and switch at
one moment. Clients under load see exactly one version change, and the last answer of the old version
is less than a second before the first answer of the new one.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.inference.sample import synthetic_frame
from core.servers import WEBHOOK_CACHE_TTL_S
from core.settings import get_settings
from serving.routes.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from tests.serving_support import Service, register, serve, unique_model_name

pytestmark = pytest.mark.slow

SECRET = "test-webhook-secret"
CONFIG = "configs/settings.yaml,configs/examples/breast_cancer/settings.yaml"


@pytest.fixture(scope="module")
def name() -> str:
    return unique_model_name("webhook")


@pytest.fixture(scope="module")
def service(mlflow_server: str, name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    mp = pytest.MonkeyPatch()
    mp.setenv("MLOPS_CONFIG", CONFIG)  # the breast-cancer contract, for the models registered here too
    try:
        assert register(mlflow_server, name, seed=1) == "1"
        assert register(mlflow_server, name, family="hist_gradient_boosting", seed=2, alias=None) == "2"
        env = {
            "MLOPS_CONFIG": CONFIG,
            "MLOPS_SERVING__WORKERS": "2",
            "MLOPS_SERVING__RELOAD_INTERVAL_S": "600",
            "MLOPS_SERVING__WEBHOOK_SECRET": SECRET,
        }
        with serve(mlflow_server, name, tmp_path_factory.mktemp("webhook"), env) as svc:
            yield svc
    finally:
        mp.undo()


def _records(n: int) -> list[dict[str, Any]]:
    """Valid records of the breast-cancer contract, as JSON would carry them."""
    frame = synthetic_frame(get_settings().contract, n, seed=3, edge_cases=False)
    records: list[dict[str, Any]] = json.loads(frame.to_json(orient="records", date_format="iso"))
    return records


def _signed(body: bytes, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    delivery, timestamp = "d-1", str(at if at is not None else int(time.time()))
    return {
        "content-type": "application/json",
        DELIVERY_HEADER: delivery,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, delivery, timestamp, body),
    }


def test_unsigned_forged_or_stale_deliveries_are_refused(service: Service, name: str) -> None:
    body = b'{"entity": "model_version_alias", "action": "created", "data": {"name": "%s", "alias": "champion"}}'
    body = body.replace(b"%s", name.encode())
    url = f"{service.url}/webhooks/mlflow"
    assert httpx.post(url, content=body, headers={"content-type": "application/json"}).status_code == 401
    assert httpx.post(url, content=body, headers=_signed(body, secret="wrong")).status_code == 401
    stale = httpx.post(url, content=body, headers=_signed(body, at=int(time.time()) - 3600))
    assert stale.status_code == 401 and "within 300 s" in stale.json()["detail"]
    other = body.replace(name.encode(), b"some-other-model")
    reply = httpx.post(url, content=other, headers=_signed(other))
    assert reply.status_code == 202 and reply.json()["nudged"] is False
    junk = b'{"entity": "model_version_alias"}'
    assert httpx.post(url, content=junk, headers=_signed(junk)).status_code == 422


def test_an_alias_move_reaches_both_workers_at_once_through_the_webhook(
    service: Service, name: str, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from core.registry.webhooks import ensure_alias_webhook

    monkeypatch.setenv("MLOPS_CONFIG", CONFIG)
    monkeypatch.setenv("MLOPS_MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLOPS_MODEL_NAME", name)
    monkeypatch.setenv("MLOPS_SERVING__WEBHOOK_SECRET", SECRET)
    settings = get_settings()
    ensure_alias_webhook(settings, f"{service.url}/webhooks/mlflow")
    ensure_alias_webhook(settings, f"{service.url}/webhooks/mlflow")  # idempotent: updated, not doubled
    hooks = [h for h in mlflow.MlflowClient(mlflow_server).list_webhooks() if h.name == f"{name}-serving"]
    assert len(hooks) == 1
    time.sleep(WEBHOOK_CACHE_TTL_S + 1)  # the server's cached (empty) webhook list from the fixture expires

    records = _records(64)
    stop = threading.Event()
    seen: list[list[tuple[float, str]]] = [[] for _ in range(4)]  # per client: (answered at, version)
    failures: list[str] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=service.url, timeout=30) as c:  # keep-alive: one connection per client
            deadline = time.monotonic() + 90
            k = i
            while not stop.is_set() and time.monotonic() < deadline:
                r = c.post("/predict", json=records[k % len(records)])
                k += 1
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                seen[i].append((time.monotonic(), r.json()["model_version"]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    moved_at = time.monotonic()
    mlflow.MlflowClient(mlflow_server).set_registered_model_alias(name, "champion", "2")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(s and s[-1][1] == "2" for s in seen):
        time.sleep(0.2)
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(30)

    assert not failures, failures[:5]
    answers = sorted(a for s in seen for a in s)
    first_new = min(t for t, v in answers if v == "2")
    last_old = max(t for t, v in answers if v == "1")
    assert first_new - moved_at < 15, f"v2 answered {first_new - moved_at:.1f}s after the move (poll: 600 s)"
    assert last_old - first_new < 1.0, f"v1 still answered {last_old - first_new:.2f}s after v2 first did"
    for i, answered in enumerate(seen):
        versions = [v for _, v in answered]
        changes = sum(a != b for a, b in itertools.pairwise(versions))
        assert versions[0] == "1" and versions[-1] == "2" and changes == 1, f"client {i} saw {changes} changes"
