"""A small HTTP/1.1 load generator: keep-alive connections, pre-encoded requests, latency per request.

Written on raw asyncio streams rather than an HTTP client library so that the generator's own cost
(a few tens of microseconds a request) stays far below the servers' it measures; both servers in a
benchmark are driven by this same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    duration_s: float = 0.0

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    def summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies_s) * 1000
        return {
            "requests": float(len(lat)),
            "ok": float(self.ok),
            "failed": float(len(lat) - self.ok + self.errors),
            "rps": self.ok / self.duration_s if self.duration_s else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        }


def build_request(  # noqa: PLR0917
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _worker(  # noqa: PLR0917 - private, one call site
    host: str, port: int, request: bytes, deadline: float, budget: list[int], result: LoadResult
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            try:
                writer.write(request)
                status, _ = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            result.latencies_s.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def run_load(  # noqa: PLR0917
    host: str, port: int, request: bytes, concurrency: int, duration_s: float, max_requests: int = 10**9
) -> LoadResult:
    """`concurrency` connections send `request` back to back for `duration_s` (or `max_requests` in all)."""
    result = LoadResult()
    budget = [max_requests]
    started = time.perf_counter()
    deadline = started + duration_s
    await asyncio.gather(*(_worker(host, port, request, deadline, budget, result) for _ in range(concurrency)))
    result.duration_s = time.perf_counter() - started
    return result


def load(host: str, port: int, request: bytes, concurrency: int, duration_s: float) -> LoadResult:
    try:
        import uvloop

        return uvloop.run(run_load(host, port, request, concurrency, duration_s))
    except ImportError:
        return asyncio.run(run_load(host, port, request, concurrency, duration_s))


async def _once(host: str, port: int, request: bytes) -> tuple[float, int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        started = time.perf_counter()
        writer.write(request)
        status, body = await _read_response(reader)
        return time.perf_counter() - started, status, body
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def send_once(host: str, port: int, request: bytes) -> tuple[float, int, bytes]:
    """One request on a fresh connection: (seconds from the first byte sent to the last byte read, status,
    body). The connection is opened before the clock starts, as a keep-alive client's would be."""
    return asyncio.run(_once(host, port, request))
