"""Notifications reach a real HTTP receiver on 127.0.0.1 with a Slack-compatible body."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.notify import notify
from core.settings import Settings
from tests.webhook import Receiver, webhook_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as r:
        yield r


def test_posts_slack_payload(receiver: Receiver, state_dir: Path) -> None:
    settings = Settings(notifications={"webhook_url": receiver.url})
    assert notify("promotion_decision", "card-fraud v3 promoted", {"delta": "+0.012"}, settings)
    [body] = receiver.received
    assert body["text"].endswith("card-fraud v3 promoted")
    assert body["blocks"][0]["type"] == "header"
    assert "*delta*: +0.012" in body["blocks"][1]["text"]["text"]
    assert body["event"] == "promotion_decision"


def test_unconfigured_event_is_not_sent(receiver: Receiver, state_dir: Path) -> None:
    settings = Settings(notifications={"webhook_url": receiver.url, "events": ["drift_detected"]})
    assert not notify("promotion_decision", "x", {}, settings)
    assert receiver.received == []


def test_receiver_error_does_not_raise(receiver: Receiver, state_dir: Path) -> None:
    receiver.status = 500
    settings = Settings(notifications={"webhook_url": receiver.url})
    assert not notify("drift_detected", "drift", {"share": 0.6}, settings)
    assert len(receiver.received) == 1


def test_unreachable_receiver_does_not_raise(state_dir: Path) -> None:
    settings = Settings(notifications={"webhook_url": "http://127.0.0.1:9/nothing", "timeout_s": 1})
    assert not notify("drift_detected", "drift", {}, settings)
