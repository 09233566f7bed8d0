"""/webhooks/mlflow: MLflow's registry webhook, so the service follows an alias at once, not at its next poll.

MLflow (3.3 and later) posts `model_version_alias.created` and `.deleted` to the URL registered with
`mlops webhook register`, signed with the shared secret (`serving.webhook_secret`): header
`X-MLflow-Signature: v1,<base64 HMAC-SHA256 of "<delivery id>.<timestamp>.<body>">`. A delivery about
the served model's alias nudges every worker of this service (serving/swaps.py); they check the registry
and swap together. Anything else is acknowledged and ignored. Without a secret the route answers 403:
an unsigned request could otherwise make the service hammer the registry.
"""

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from serving.deps import RolloutDep, SettingsDep, StoreDep
from serving.errors import ERROR_RESPONSES
from serving.schemas import ErrorOut, WebhookOut

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
MAX_AGE_S = 300  # older deliveries are refused: a captured request cannot be replayed later
ALIAS_ENTITY = "model_version_alias"

router = APIRouter(prefix="/webhooks", tags=["admin"])


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _verify(request: Request, body: bytes, secret: str) -> None:
    given = request.headers.get(SIGNATURE_HEADER)
    timestamp = request.headers.get(TIMESTAMP_HEADER, "")
    delivery = request.headers.get(DELIVERY_HEADER, "")
    if not given or not timestamp or not delivery:
        raise HTTPException(401, f"unsigned: {SIGNATURE_HEADER}, {TIMESTAMP_HEADER} and {DELIVERY_HEADER} are required")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > MAX_AGE_S:
        raise HTTPException(401, f"{TIMESTAMP_HEADER} is not within {MAX_AGE_S} s of this server's clock")
    if not hmac.compare_digest(given.encode(), signature(secret, delivery, timestamp, body).encode()):
        raise HTTPException(401, f"{SIGNATURE_HEADER} does not match the body and serving.webhook_secret")


@router.post(
    "/mlflow",
    response_model=WebhookOut,
    status_code=202,
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorOut, "description": "Webhooks are disabled: no serving.webhook_secret is set"},
    },
    summary="MLflow registry webhook: an alias of the served model moved; every worker checks now",
)
async def mlflow_webhook(request: Request, settings: SettingsDep, store: StoreDep, rollout: RolloutDep) -> WebhookOut:
    if settings.serving.webhook_secret is None:
        raise HTTPException(403, "webhooks are disabled: set MLOPS_SERVING__WEBHOOK_SECRET")
    body = await request.body()
    _verify(request, body, settings.serving.webhook_secret.get_secret_value())
    try:
        payload: Any = json.loads(body)
        entity, action, data = payload["entity"], payload["action"], payload["data"]
        name, alias = str(data["name"]), str(data["alias"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HTTPException(422, f"not an MLflow alias webhook payload: {exc!r}") from None
    # The champion's alias, or the rollout's second model's (shadow or canary): each has its own board.
    boards = {settings.serving.model_alias: store.board, settings.serving.rollout.alias: rollout.challenger.board}
    watched = entity == ALIAS_ENTITY and name == settings.model_name and alias in boards
    if watched:
        boards[alias].nudge(f"webhook {entity}.{action} {name}@{alias} -> v{data.get('version')}")
    return WebhookOut(
        accepted=True, nudged=watched, detail=None if watched else f"not watched: {entity} {name}@{alias}"
    )
