"""Shadow and canary in the real service (`python -m serving`) against the real MLflow server.

Shadow on the fraud demo's contract, started from the settings; canary stickiness, /admin switching and the
automatic rollback of a bad canary on a churn table that is not the fraud one (string labels, an entity
column the canary sticks to). The bad canary is a real registered model: a logistic regression so strongly
regularised that every score is the base rate.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
import yaml

from core.contract import load_contract
from core.predictions import read_predictions
from serving.rollout import bucket
from tests.serving_support import ADMIN_KEY, Service, record, register, serve, unique_model_name, wait_for

pytestmark = pytest.mark.slow

ADMIN = {"X-API-Key": ADMIN_KEY}


def test_shadow_logs_both_roles_under_one_request_id_and_answers_with_the_champion(
    mlflow_server: str, tmp_path: Path
) -> None:
    name = unique_model_name("shadow")
    assert register(mlflow_server, name, seed=1) == "1"
    assert register(mlflow_server, name, seed=2, alias="challenger") == "2"
    env = {"MLOPS_SERVING__ROLLOUT__MODE": "shadow"}
    with serve(mlflow_server, name, tmp_path, env) as svc, svc.client() as c:
        ids = []
        for _ in range(30):
            r = c.post("/predict", json=record())
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["model_version"], body["role"]) == ("1", "champion")
            ids.append(body["request_id"])
        url = f"sqlite:///{tmp_path / 'predictions.db'}"
        every = logged_rows(url, 60, roles=None)
        for request_id in ids:
            rows = every[every["request_id"] == request_id]
            assert sorted(zip(rows["role"], rows["model_version"], strict=True)) == [("champion", "1"), ("shadow", "2")]
        assert len(read_predictions(url)) == 30  # monitoring's default: the answers only
        status = c.get("/admin/rollout", headers=ADMIN).json()
        assert (status["mode"], status["champion_version"], status["challenger_version"]) == ("shadow", "1", "2")
        assert status["stats"]["shadow"]["requests"] == 30
        assert 0 <= status["stats"]["shadow"]["agreement"] <= 1
        assert 'serving_shadow_predictions_total{outcome="scored"} 30.0' in c.get("/metrics").text


CHURN: dict[str, Any] = {
    "name": "churn_check",
    "task": "binary",
    "target": {"name": "churned", "classes": ["stay", "leave"], "positive_class": "leave"},
    "columns": [
        {"name": "customer", "type": "string", "example": "c-1"},
        {"name": "tenure_months", "type": "float", "min": 0, "max": 120, "example": 12},
        {"name": "monthly_spend", "type": "float", "min": 0, "max": 500, "example": 40},
        {"name": "plan", "type": "category", "categories": ["basic", "plus", "pro"], "example": "plus"},
        {"name": "churned", "type": "category", "categories": ["stay", "leave"]},
    ],
}
SHARE = 0.3


@pytest.fixture(scope="module")
def churn(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, str]]:
    from serving.example_model import register_example_model

    root = tmp_path_factory.mktemp("churn")
    contract_path = root / "dataset.yaml"
    contract_path.write_text(yaml.safe_dump(CHURN))
    contract = load_contract(contract_path)
    name = unique_model_name("churn")
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    assert register_example_model(contract, name, seed=1, n_rows=1_000) == "1"
    assert register_example_model(contract, name, seed=2, n_rows=1_000, alias="challenger") == "2"
    # The bad canary: every score is about the base rate.
    assert register_example_model(contract, name, seed=3, n_rows=1_000, alias=None, params={"C": 1e-9}) == "3"
    env = {
        "MLOPS_CONFIG": "configs/settings.yaml",
        "MLOPS_CONTRACT_PATH": str(contract_path),
        "MLOPS_SERVING__ROLLOUT__STICKY_COLUMN": "customer",
        "MLOPS_SERVING__ROLLOUT__ROLLBACK__MIN_REQUESTS": "50",
        "MLOPS_SERVING__ROLLOUT__ROLLBACK__MAX_SCORE_PSI": "1.0",
        "MLOPS_SERVING__ROLLOUT__ROLLBACK__WINDOW_S": "30",
    }
    with serve(mlflow_server, name, root / "state", env) as svc:
        yield svc, name


def logged_rows(url: str, n: int, roles: tuple[str, ...] | None = ("champion", "canary")) -> pd.DataFrame:
    """The prediction log once it holds `n` rows of `roles` (the writer flushes in the background)."""
    wait_for(lambda: len(read_predictions(url, roles=roles)) >= n)
    frame = read_predictions(url, roles=roles)
    assert len(frame) == n, len(frame)
    return frame


def churn_record(customer: str, i: int) -> dict[str, Any]:
    return {"customer": customer, "tenure_months": float(i % 120), "monthly_spend": float(i % 500), "plan": "plus"}


def test_admin_needs_the_key_and_switches_the_mode(churn: tuple[Service, str]) -> None:
    with churn[0].client() as c:
        assert c.get("/admin/rollout").status_code == 401
        assert c.put("/admin/rollout", json={"mode": "canary"}).status_code == 401
        status = c.get("/admin/rollout", headers=ADMIN).json()
        assert (status["mode"], status["sticky_column"]) == ("off", "customer")
        bad = c.put("/admin/rollout", json={"mode": "sideways"}, headers=ADMIN)
        assert bad.status_code == 422 and "mode" in bad.text
        assert c.put("/admin/rollout", json={"canary_share": 2}, headers=ADMIN).status_code == 422
        r = c.put("/admin/rollout", json={"mode": "shadow"}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["challenger_version"] == "2", r.text
        r = c.put("/admin/rollout", json={"mode": "off", "reason": "test"}, headers=ADMIN)
        assert (r.json()["mode"], r.json()["reason"]) == ("off", "test")


def test_canary_sticks_to_the_entity_and_answers_its_share(churn: tuple[Service, str]) -> None:
    svc, _ = churn
    with svc.client() as c:
        r = c.put("/admin/rollout", json={"mode": "canary", "canary_share": SHARE}, headers=ADMIN)
        assert r.status_code == 200, r.text
        first: dict[str, tuple[str, str]] = {}
        counted: Counter[str] = Counter()
        for i in range(2_000):
            body = c.post("/predict", json=churn_record(f"c-{i}", i)).json()
            first[f"c-{i}"] = (body["role"], body["model_version"])
            counted[body["role"]] += 1
        assert set(first.values()) == {("champion", "1"), ("canary", "2")}
        share = Counter(role for role, _ in first.values())["canary"] / len(first)
        assert abs(share - SHARE) < 0.04, share
        # The assignment is the stable hash of the entity: the same in every process and every run.
        assert all((role == "canary") == (bucket(k) < SHARE) for k, (role, _) in first.items())
        for i in range(0, 2_000, 7):  # again, with other values: the entity decides, not the record
            body = c.post("/predict", json=churn_record(f"c-{i}", i + 3)).json()
            assert (body["role"], body["model_version"]) == first[f"c-{i}"]
            counted[body["role"]] += 1
        answers = sum(counted.values())
        status = c.get("/admin/rollout", headers=ADMIN).json()
        assert status["mode"] == "canary", status  # a good canary is not rolled back
        assert status["stats"]["canary"]["requests"] > 400
        url = f"sqlite:///{svc.state / 'predictions.db'}"
        logged = logged_rows(url, answers)
        canary = logged[logged["role"] == "canary"]
        assert set(canary["model_version"]) == {"2"} and len(canary) == counted["canary"]
        c.put("/admin/rollout", json={"mode": "off"}, headers=ADMIN)


def test_a_bad_canary_is_rolled_back_within_seconds_and_the_decision_recorded(
    churn: tuple[Service, str], mlflow_server: str
) -> None:
    svc, name = churn
    mlflow.MlflowClient(tracking_uri=mlflow_server).set_registered_model_alias(name, "challenger", "3")
    with svc.client() as c:
        r = c.put("/admin/rollout", json={"mode": "canary", "canary_share": 0.5}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["challenger_version"] == "3", r.text
        canaries = 0
        reached: float | None = None
        stopped: float | None = None
        deadline = time.monotonic() + 60
        i = 0
        while time.monotonic() < deadline and i < 5_000:
            body = c.post("/predict", json=churn_record(f"bad-{i}", i)).json()
            i += 1
            if body["role"] == "canary":
                canaries += 1
                if canaries == 50:
                    reached = time.monotonic()
            elif reached is not None and c.get("/admin/rollout", headers=ADMIN).json()["mode"] == "off":
                stopped = time.monotonic()
                break
        assert reached is not None and stopped is not None, (canaries, i)
        assert stopped - reached < 5, stopped - reached
        print(f"canary stopped {stopped - reached:.2f} s after its 50th answer ({i} requests)")
        status = c.get("/admin/rollout", headers=ADMIN).json()
        assert (status["mode"], status["canary_share"]) == ("off", 0.0)
        decision = status["last_decision"]
        assert decision["decision"] == "rollback" and decision["challenger_version"] == "3"
        assert "score_psi" in decision["limits"] and "score PSI" in decision["reason"]
        lines = (svc.state / "serving" / "rollout-decisions.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["reason"] == decision["reason"]
        assert 'serving_rollout_rollbacks_total{limit="score_psi"} 1.0' in c.get("/metrics").text
        after = c.post("/predict", json=churn_record("bad-0", 0)).json()
        assert (after["role"], after["model_version"]) == ("champion", "1")
        assert "canary rolled back" in svc.log.read_text()


def test_every_worker_follows_a_switch_within_a_second(mlflow_server: str, tmp_path: Path) -> None:
    name = unique_model_name("rollout-workers")
    assert register(mlflow_server, name, seed=1) == "1"
    assert register(mlflow_server, name, seed=2, alias="challenger") == "2"
    with serve(mlflow_server, name, tmp_path, {"MLOPS_SERVING__WORKERS": "2"}) as svc:
        assert httpx.put(f"{svc.url}/admin/rollout", json={"mode": "shadow"}, headers=ADMIN, timeout=60).is_success
        # Every worker loads the challenger: the one that took the PUT at once, the others when they see the
        # switch (not at their next alias poll).
        r = httpx.put(
            f"{svc.url}/admin/rollout", json={"mode": "canary", "canary_share": 1.0}, headers=ADMIN, timeout=60
        )
        assert r.status_code == 200, r.text
        switched = time.monotonic()
        seen: dict[int, str] = {}

        def both_workers_canary() -> bool:
            # A new connection each time: the kernel spreads them over the workers.
            status = httpx.get(f"{svc.url}/admin/rollout", headers=ADMIN, timeout=10).json()
            seen[status["stats"]["worker_pid"]] = f"{status['mode']} v{status['challenger_version']}"
            return len(seen) == 2 and set(seen.values()) == {"canary v2"}

        wait_for(both_workers_canary, timeout=30, interval=0.05)
        print(f"both workers in canary mode {time.monotonic() - switched:.2f} s after the PUT")
        answers: Counter[tuple[str, str]] = Counter()
        for _ in range(60):
            body = httpx.post(f"{svc.url}/predict", json=record(), timeout=30).json()
            answers[(body["role"], body["model_version"])] += 1
        assert answers == {("canary", "2"): 60}, answers
        assert httpx.put(f"{svc.url}/admin/rollout", json={"mode": "off"}, headers=ADMIN, timeout=60).is_success
        time.sleep(1.0)
        for _ in range(20):
            body = httpx.post(f"{svc.url}/predict", json=record(), timeout=30).json()
            assert (body["role"], body["model_version"]) == ("champion", "1")
