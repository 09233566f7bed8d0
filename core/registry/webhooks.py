"""The registry webhook that tells the prediction service an alias moved (serving/routes/webhooks.py).

`ensure_alias_webhook` creates, or updates in place, one webhook named `<model>-serving` for the alias
events, signed with `serving.webhook_secret`. MLflow refuses plain-http and private addresses unless its
server runs with MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true
(the local stack's server does: core/servers.py); in production, point it at the service's https URL.
"""

from __future__ import annotations

from typing import Any

from core.settings import Settings

ALIAS_EVENTS = ["model_version_alias.created", "model_version_alias.deleted"]


class WebhookSetupError(RuntimeError):
    """The webhook could not be registered; the message says why and what to set."""


def webhook_name(settings: Settings) -> str:
    return f"{settings.model_name}-serving"


def ensure_alias_webhook(settings: Settings, url: str) -> Any:
    """The registry's `<model>-serving` webhook, pointing at `url` (the service's /webhooks/mlflow)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    secret = settings.serving.webhook_secret
    if secret is None:
        raise WebhookSetupError("set MLOPS_SERVING__WEBHOOK_SECRET (the service checks signatures with it)")
    client = MlflowClient(settings.mlflow_tracking_uri)
    name = webhook_name(settings)
    try:
        existing = [w for w in client.list_webhooks() if w.name == name]
        events: list[Any] = list(ALIAS_EVENTS)
        if existing:
            return client.update_webhook(
                existing[0].webhook_id, url=url, events=events, secret=secret.get_secret_value(), status="ACTIVE"
            )
        return client.create_webhook(
            name=name,
            url=url,
            events=events,
            secret=secret.get_secret_value(),
            description="alias moves -> the prediction service",
        )
    except MlflowException as exc:
        raise WebhookSetupError(f"the registry refused the webhook for {url}: {exc.message}") from None
