"""Reading back what the project sent to the run's Prefect server."""

from __future__ import annotations

import time


def model_events(model_name: str, expected: dict[str, int], timeout_s: float = 30) -> dict[str, list[dict]]:
    """The Prefect events about `mlops.model.<model_name>`, by name, once `expected` counts have arrived."""
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)  # flows emit through a background worker
    query = {"filter": {"resource": {"id": [f"mlops.model.{model_name}"]}, "event": {"prefix": ["mlops."]}}}
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            found = client.request("POST", "/events/filter", json=query).json()["events"]
        by_name: dict[str, list[dict]] = {}
        for e in found:
            by_name.setdefault(e["event"], []).append(e)
        if all(len(by_name.get(k, [])) >= n for k, n in expected.items()) or time.monotonic() > deadline:
            return by_name
        time.sleep(0.5)
