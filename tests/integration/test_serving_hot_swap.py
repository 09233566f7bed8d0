"""Hot swap under load: the alias moves while 8 clients send 2,000 requests; none fails."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import pytest

from tests.serving_support import ADMIN_KEY, record, register, serve, unique_model_name, wait_for

pytestmark = pytest.mark.slow

CLIENTS = 8
REQUESTS = 2_000


def test_alias_moves_under_load_without_a_failed_request(mlflow_server: str, tmp_path: Path) -> None:
    name = unique_model_name("hot-swap")
    assert register(mlflow_server, name, seed=1) == "1"
    # v2 is registered up front (not yet the champion) so that the swap lands early in the run.
    assert register(mlflow_server, name, family="hist_gradient_boosting", seed=2, alias=None) == "2"
    # A long poll interval: the swap below is forced through /admin/reload, mid-run, on purpose.
    env = {"MLOPS_SERVING__RELOAD_INTERVAL_S": "600"}
    with serve(mlflow_server, name, tmp_path, env) as svc:
        versions: Counter[str] = Counter()
        failures: list[str] = []
        sent = 0
        lock = threading.Lock()
        half = threading.Event()
        body = record()

        def client() -> None:
            nonlocal sent
            with httpx.Client(base_url=svc.url, timeout=30) as c:
                while True:
                    with lock:
                        if sent >= REQUESTS:
                            return
                        sent += 1
                        if sent == REQUESTS // 4:
                            half.set()
                    try:
                        r = c.post("/predict", json=body)
                    except httpx.HTTPError as exc:
                        with lock:
                            failures.append(repr(exc))
                        continue
                    with lock:
                        if r.status_code != 200:
                            failures.append(f"{r.status_code}: {r.text[:200]}")
                        else:
                            versions[r.json()["model_version"]] += 1

        def swap() -> None:
            half.wait(60)
            mlflow.MlflowClient(tracking_uri=mlflow_server).set_registered_model_alias(name, "champion", "2")
            r = httpx.post(f"{svc.url}/admin/reload", headers={"X-API-Key": ADMIN_KEY}, timeout=120)
            assert r.status_code == 200 and r.json()["changed"] is True, r.text

        with ThreadPoolExecutor(CLIENTS + 1) as pool:
            swapper = pool.submit(swap)
            clients = [pool.submit(client) for _ in range(CLIENTS)]
            for f in clients:
                f.result()
            swapper.result()

        assert failures == []
        assert sum(versions.values()) == REQUESTS
        assert set(versions) == {"1", "2"}, versions  # both versions served, each response names one
        assert wait_for(lambda: httpx.get(f"{svc.url}/model").json()["version"] == "2")
        metrics = httpx.get(f"{svc.url}/metrics").text
        assert 'serving_model_reloads_total{result="swapped"} 2.0' in metrics
