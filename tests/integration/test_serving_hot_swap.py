"""Hot swap under load: the alias moves while 8 clients keep sending requests; none fails."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import pytest

from tests.serving_support import ADMIN_KEY, record, register, serve, unique_model_name, wait_for

pytestmark = pytest.mark.slow

CLIENTS = 8
BEFORE = 500  # requests answered before the alias moves
AFTER = 1_000  # requests sent after /admin/reload returned (the swap is done by then)
MAX_REQUESTS = 50_000  # bounds: the loop stops here, or at MAX_SECONDS, whatever the swap does
MAX_SECONDS = 180.0


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
        flipped_back: list[str] = []
        sent = 0
        stop_at: int | None = None  # set once the swap returned: AFTER more requests, then stop
        lock = threading.Lock()
        started = threading.Event()
        deadline = time.monotonic() + MAX_SECONDS
        body = record()

        def client() -> None:
            nonlocal sent
            seen_v2 = False
            with httpx.Client(base_url=svc.url, timeout=30) as c:
                while True:
                    with lock:
                        limit = MAX_REQUESTS if stop_at is None else stop_at
                        if sent >= limit or time.monotonic() > deadline:
                            return
                        sent += 1
                        if sent == BEFORE:
                            started.set()
                    try:
                        r = c.post("/predict", json=body)
                    except httpx.HTTPError as exc:
                        with lock:
                            failures.append(repr(exc))
                        continue
                    with lock:
                        if r.status_code != 200:
                            failures.append(f"{r.status_code}: {r.text[:200]}")
                            continue
                        version = r.json()["model_version"]
                        versions[version] += 1
                        if version == "1" and seen_v2:
                            flipped_back.append(r.json()["request_id"])
                        seen_v2 = seen_v2 or version == "2"

        def swap() -> None:
            nonlocal stop_at
            assert started.wait(60), "the clients never got going"
            mlflow.MlflowClient(tracking_uri=mlflow_server).set_registered_model_alias(name, "champion", "2")
            r = httpx.post(f"{svc.url}/admin/reload", headers={"X-API-Key": ADMIN_KEY}, timeout=120)
            with lock:
                stop_at = sent + AFTER
            assert r.status_code == 200 and r.json()["changed"] is True, r.text

        with ThreadPoolExecutor(CLIENTS + 1) as pool:
            swapper = pool.submit(swap)
            clients = [pool.submit(client) for _ in range(CLIENTS)]
            for f in clients:
                f.result()
            swapper.result()

        assert stop_at is not None and sent == stop_at, f"stopped by a bound at {sent} requests"
        assert failures == []
        assert sum(versions.values()) == sent
        assert set(versions) == {"1", "2"}, versions  # both versions served, each response names one
        assert versions["2"] >= AFTER, versions  # everything sent after the reload returned is v2
        assert flipped_back == []  # no client saw v1 again once it had seen v2
        assert wait_for(lambda: httpx.get(f"{svc.url}/model").json()["version"] == "2")
        metrics = httpx.get(f"{svc.url}/metrics").text
        assert 'serving_model_reloads_total{result="swapped"} 2.0' in metrics
