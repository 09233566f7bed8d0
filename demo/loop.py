"""One turn of the closed loop against a running stack, timed.

traffic (new days in the warehouse, scored over HTTP, labels fed back) -> monitoring flow ->
(policy fires) retraining deployment on the Prefect worker -> promotion gate -> the API's watcher
swaps in the new champion. Used by `make demo`, the end-to-end test and `make bench-loop`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from core.settings import Settings
from demo.traffic import (
    TrafficResult,
    append_days,
    rows_between,
    send_feedback,
    send_predictions,
    to_records,
)

Say = Callable[[str], None]
# The loop on small simulated data (40 days of 700 transactions, one family, short folds and bootstrap):
# small enough that a retraining run takes a minute on a laptop, big enough for the gate to judge. For
# tests and fault scenarios, as environment variables.
SMALL_DATA = {
    "MLOPS_SIMULATOR__DAYS": "40",
    "MLOPS_SIMULATOR__ROWS_PER_DAY": "700",
    "MLOPS_SPLITS__WINDOW_DAYS": "28",
    "MLOPS_TRAINING__FAMILIES": '["logistic"]',
    "MLOPS_TRAINING__CV_FOLDS": "2",
    "MLOPS_GATE__N_BOOTSTRAP": "200",
}
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class LoopTurn:
    scenario: str
    traffic: TrafficResult
    feedback_accepted: int
    monitor: dict[str, Any]
    retrain_state: str | None = None
    retrain_result: dict[str, Any] | None = None
    version_before: str | None = None
    version_after: str | None = None
    # seconds from the first drifted request to the first response from the new champion
    loop_seconds: float | None = None
    # seconds from the monitoring decision (the monitor flow returned) to that first response
    decision_to_serving_s: float | None = None
    timings: dict[str, float] = field(default_factory=dict)


def wait_flow_run(prefect_api_url: str, flow_run_id: str, timeout_s: float, say: Say = print) -> str:
    """Poll a flow run until it reaches a final state; returns the state type."""
    deadline = time.monotonic() + timeout_s
    last = ""
    with httpx.Client(timeout=10) as client:  # one client: each new one loads the CA bundle again (~25 ms)
        while time.monotonic() < deadline:
            resp = client.get(f"{prefect_api_url}/flow_runs/{flow_run_id}")
            resp.raise_for_status()
            state = (resp.json().get("state") or {}).get("type", "")
            if state != last:
                say(f"  retraining flow run {flow_run_id[:8]}: {state}")
                last = state
            if state in FINAL_STATES:
                return state
            time.sleep(1.0)
    raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout_s:.0f}s (last state {last})")


def wait_for_version(api_url: str, record: dict[str, Any], version: str, timeout_s: float) -> float:
    """Send a prediction every 200 ms until one is served by `version`; returns when that response came."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=api_url, timeout=10) as client:
        while time.monotonic() < deadline:
            resp = client.post("/predict", json=record)
            if resp.status_code == 200 and str(resp.json()["model_version"]) == version:
                return time.time()
            time.sleep(0.2)
    raise TimeoutError(f"the API at {api_url} did not serve version {version} within {timeout_s:.0f}s")


def turn(
    settings: Settings,
    api_url: str,
    prefect_api_url: str,
    *,
    scenario: str,
    days: int,
    seed: int | None = None,
    timeout_s: float = 900,
    say: Say = print,
) -> LoopTurn:
    """Run one monitored traffic period and, when the policy fires, follow retraining to the API."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.monitor import monitor

    t0 = time.perf_counter()
    before = _served_version(api_url)
    say(f"appending {days} days of '{scenario}' traffic to the warehouse ...")
    written = append_days(settings, days, scenario, seed)
    frame = rows_between(settings, written.start, written.end)
    say(f"scoring {len(frame)} transactions through {api_url}/predict ...")
    traffic = send_predictions(api_url, frame, settings.contract)
    if traffic.failures:
        say(f"  {traffic.failures} of {traffic.requests} requests failed: {traffic.errors[:3]}")
    scored_s = time.perf_counter() - t0
    accepted = send_feedback(api_url, traffic.request_ids, traffic.labels)
    say(f"  {traffic.rows} scored by versions {traffic.versions}; {accepted} labels fed back")
    timings = {"scoring_s": scored_s, "traffic_s": time.perf_counter() - t0}

    say("running the monitoring flow ...")
    # The flow run, and the retraining it may start, belong to the stack's Prefect API, whichever server
    # this process's Prefect settings were read for when it was first imported.
    with temporary_settings({PREFECT_API_URL: prefect_api_url}):
        record = monitor(trigger=True)
    timings["monitor_s"] = time.perf_counter() - t0 - timings["traffic_s"]
    decided_at = time.time()
    result = LoopTurn(scenario, traffic, accepted, record, version_before=before, timings=timings)
    if not record.get("triggered"):
        say(f"  no retraining: {'; '.join(record.get('reasons', [])) or record.get('status')}")
        result.version_after = _served_version(api_url)
        return result

    probe = _records_for_probe(frame, settings)
    # The retraining flow promotes mid-run (then tunes); the API may serve the new champion well before
    # the run ends. A probe every 200 ms notes when each version first answered.
    with VersionProbe(api_url, probe) as seen:
        state = wait_flow_run(prefect_api_url, record["flow_run_id"], timeout_s, say)
    result.retrain_state = state
    timings["retrain_s"] = time.perf_counter() - t0 - timings["traffic_s"] - timings["monitor_s"]
    champion = _champion_version(settings)
    if state == "COMPLETED" and champion and champion != before:
        say(f"  gate promoted v{champion}; waiting for the API to serve it ...")
        served_at = seen.first.get(champion) or wait_for_version(api_url, probe, champion, timeout_s=120)
        assert traffic.first_sent_at is not None
        result.loop_seconds = served_at - traffic.first_sent_at
        result.decision_to_serving_s = served_at - decided_at
    else:
        say(f"  retraining ended {state}; champion stays v{champion}")
    result.version_after = _served_version(api_url)
    return result


class VersionProbe:
    """Within `with`: POST /predict with `record` every `interval_s` seconds from a thread, noting the
    wall-clock time each model version first answered (`first`)."""

    def __init__(self, api_url: str, record: dict[str, Any], interval_s: float = 0.2) -> None:
        self.api_url, self.record, self.interval_s = api_url, record, interval_s
        self.first: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="version-probe", daemon=True)

    def __enter__(self) -> VersionProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        with httpx.Client(base_url=self.api_url, timeout=10) as client:
            while not self._stop.wait(self.interval_s):
                try:
                    resp = client.post("/predict", json=self.record)
                except httpx.HTTPError:
                    continue
                if resp.status_code == 200:
                    self.first.setdefault(str(resp.json()["model_version"]), time.time())


def _served_version(api_url: str) -> str | None:
    try:
        body = httpx.get(f"{api_url}/ready", timeout=5).json()
    except httpx.HTTPError:
        return None
    v = body.get("model_version")
    return str(v) if v is not None else None


def _champion_version(settings: Settings) -> str | None:
    from core.registry import aliases as registry
    from core.registry.tracking import use_experiment

    use_experiment(settings)
    mv = registry.version_by_alias(settings.model_name, registry.CHAMPION)
    return str(mv.version) if mv else None


def _records_for_probe(frame: Any, settings: Settings) -> dict[str, Any]:
    return to_records(frame.head(1), settings.contract)[0]
