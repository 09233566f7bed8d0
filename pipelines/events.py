"""The loop's Prefect events: what monitoring, the gate and rollbacks tell the rest of the system.

Every event concerns one registered model, the resource `mlops.model.<model name>`, so an automation can
match one model or all of them (`mlops.model.*`). `prefect.yaml` gives the `retrain` deployment a trigger
on `mlops.monitoring.retrain-requested`; the others are there to be watched (the Prefect UI's event
feed, an automation that notifies someone).

    mlops.monitoring.retrain-requested  the monitoring policy decided to retrain (reason, reasons, cooldown)
    mlops.promotion.decided             the gate promoted or rejected a version (decision, reason)
    mlops.rollback.done                 the champion alias was moved back (version, reason)
    mlops.rollout.compared              the compare flow compared champion and challenger on live traffic
    mlops.rollout.rolled-back           the service stopped a canary (its decision, emitted by the compare flow:
                                        serving does not import Prefect)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

log = logging.getLogger(__name__)

RETRAIN_REQUESTED = "mlops.monitoring.retrain-requested"
PROMOTION_DECIDED = "mlops.promotion.decided"
ROLLBACK_DONE = "mlops.rollback.done"
ROLLOUT_COMPARED = "mlops.rollout.compared"
ROLLOUT_ROLLED_BACK = "mlops.rollout.rolled-back"


def model_resource(model_name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"mlops.model.{model_name}", "prefect.resource.name": model_name}


def emit(event: str, model_name: str, payload: Mapping[str, Any]) -> str | None:
    """Send an event about the model; its id, or None when it could not be sent.

    With a Prefect API configured the event is sent and written before this returns (a decision's event
    is not left in a background queue that a busy or exiting process may drop); otherwise, in Prefect's
    temporary-server mode, through Prefect's events worker. Best effort either way: a decision already
    recorded in MLflow and on disk does not fail because the event feed is away."""
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        sent = emit_event(event=event, resource=model_resource(model_name), payload=dict(payload))
        return str(sent.id) if sent is not None else None
    try:
        return send_now(api, event, model_name, payload)[0]
    except Exception as exc:  # the feed being away must not fail the decision
        log.warning("event %s about %s not sent: %s", event, model_name, exc)
        return None


def gate_decided(model_name: str, version: str | int | None, decision: Mapping[str, Any] | None) -> str | None:
    """`mlops.promotion.decided` for a gate's decision (promoted or rejected, and why)."""
    if not decision:
        return None
    fields = {k: decision.get(k) for k in ("decision", "reason", "champion_version") if k in decision}
    return emit(PROMOTION_DECIDED, model_name, {"version": str(version), **fields})


def send_now(api_url: str, event: str, model_name: str, payload: Mapping[str, Any]) -> tuple[str, datetime]:
    """Send one event to the Prefect API at `api_url` and wait until it is written; (id, occurred).

    For an event something must act on (a retraining request): the caller learns here, not later in a
    background worker, whether the server took it."""
    from prefect.events import Event, Resource
    from prefect.events.clients import PrefectEventsClient

    ev = Event(event=event, resource=Resource(model_resource(model_name)), payload=dict(payload))

    async def send() -> None:
        async with PrefectEventsClient(api_url=api_url, reconnection_attempts=2) as client:
            await client.emit(ev)

    asyncio.run(send())
    return str(ev.id), ev.occurred


def find_triggered_run(api_url: str, deployment: str, event_id: str, timeout_s: float) -> str | None:
    """The flow run of `deployment` that the trigger started for event `event_id`, waiting up to `timeout_s`.

    prefect.yaml's trigger renders the event's id into the run's `event_id` parameter; the newest runs of
    the deployment are checked for it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout_s
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        deployment_id: UUID = client.read_deployment_by_name(deployment).id
        only_this = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
        while True:
            runs = client.read_flow_runs(flow_run_filter=only_this, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=20)
            for run in runs:
                if str((run.parameters or {}).get("event_id", "")) == event_id:
                    return str(run.id)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)
