"""The limits and metrics middleware: refuse oversized bodies with 413, count and time every request.

Pure ASGI (called with scope, receive, send) so that it sees the body's bytes as they arrive and can
answer 413 before FastAPI reads an oversized body.
"""

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from core.settings import Settings
from serving import metrics

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


class LimitsAndMetrics:
    def __init__(self, app: Any, settings: Settings, endpoints: set[str]) -> None:
        self.app = app
        self.max_body = settings.serving.max_body_bytes
        self.max_batch = settings.serving.max_batch_bytes
        # Metrics are labelled by route, and anything else is "other": a scan of random URLs must not
        # create a time series per URL.
        self.endpoints = endpoints

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in self.endpoints else "other"
        method = scope["method"]
        limit = self.max_batch if path == "/predict/batch" else self.max_body
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                await _too_large(send_wrapper, limit)
                return
            # Read the body here, against the limit, so that an oversized chunked body is a 413 too
            # (raised inside FastAPI's body parsing it would surface as a generic 400).
            chunks: list[bytes] = []
            received = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                received += len(message.get("body", b""))
                if received > limit:
                    await _too_large(send_wrapper, limit)
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_wrapper)
        finally:
            metrics.REQUESTS.labels(endpoint, method, str(status["code"])).inc()
            metrics.LATENCY.labels(endpoint, method, str(status["code"])).observe(time.perf_counter() - started)


def _content_length(scope: Message) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, limit: int) -> None:
    body = b'{"detail":"body: the request body is larger than the limit of ' + str(limit).encode() + b' bytes"}'
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
