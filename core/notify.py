"""Notifications: a webhook with a Slack-compatible payload.

Events: drift detected, retraining finished, each promotion decision. A notification is best
effort by design: a failing receiver is logged and never fails the flow that sent it, because the
decision it reports is already recorded in MLflow and the decision log.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any, Literal

from core.settings import Settings

log = logging.getLogger(__name__)

Event = Literal["drift_detected", "retraining_finished", "promotion_decision"]
_ICONS = {
    "drift_detected": ":warning:",
    "retraining_finished": ":arrows_counterclockwise:",
    "promotion_decision": ":scales:",
}


def slack_payload(event: Event, title: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body: `text` for clients that only read that, `blocks` for the rest."""
    lines = [f"*{k}*: {v}" for k, v in fields.items()]
    text = f"{_ICONS[event]} {title}"
    return {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines) or " "}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"event: `{event}`"}]},
        ],
        "event": event,
        "fields": {k: str(v) for k, v in fields.items()},
    }


def notify(event: Event, title: str, fields: dict[str, Any], settings: Settings) -> bool:
    """Post the event to the configured webhook. Returns True when a receiver accepted it."""
    s = settings.notifications
    if not s.webhook_url or event not in s.events:
        return False
    body = json.dumps(slack_payload(event, title, fields)).encode()
    req = urllib.request.Request(s.webhook_url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=s.timeout_s) as resp:
            ok = 200 <= resp.status < 300
    except (urllib.error.URLError, OSError) as exc:
        log.warning("notification %s to %s failed: %s", event, s.webhook_url, exc)
        return False
    if not ok:
        log.warning("notification %s: receiver answered %s", event, resp.status)
    return ok
