"""Notifications reach a real HTTP receiver on 127.0.0.1 with a Slack-compatible body."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from core.notify import notify
from core.settings import Settings


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    status = 200

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"received": [], "status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


def test_posts_slack_payload(receiver: tuple[str, type[_Receiver]], state_dir: object) -> None:
    url, handler = receiver
    settings = Settings(notifications={"webhook_url": url})
    assert notify("promotion_decision", "card-fraud v3 promoted", {"delta": "+0.012"}, settings)
    [body] = handler.received
    assert body["text"].endswith("card-fraud v3 promoted")
    assert body["blocks"][0]["type"] == "header"
    assert "*delta*: +0.012" in body["blocks"][1]["text"]["text"]
    assert body["event"] == "promotion_decision"


def test_unconfigured_event_is_not_sent(receiver: tuple[str, type[_Receiver]], state_dir: object) -> None:
    url, handler = receiver
    settings = Settings(notifications={"webhook_url": url, "events": ["drift_detected"]})
    assert not notify("promotion_decision", "x", {}, settings)
    assert handler.received == []


def test_receiver_error_does_not_raise(receiver: tuple[str, type[_Receiver]], state_dir: object) -> None:
    url, handler = receiver
    handler.status = 500
    settings = Settings(notifications={"webhook_url": url})
    assert not notify("drift_detected", "drift", {"share": 0.6}, settings)
    assert len(handler.received) == 1


def test_unreachable_receiver_does_not_raise(state_dir: object) -> None:
    settings = Settings(notifications={"webhook_url": "http://127.0.0.1:9/nothing", "timeout_s": 1})
    assert not notify("drift_detected", "drift", {}, settings)
