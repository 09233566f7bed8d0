"""A Pushgateway's receiving side for tests: a real HTTP server on 127.0.0.1 that keeps what is pushed.

It stores each PUT/POST body by path (``/metrics/job/<job>/<label>/<value>``) and parses it with
prometheus_client's own text parser, as the Pushgateway would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.parser import text_string_to_metric_families


class PushReceiver:
    def __init__(self, url: str) -> None:
        self.url = url
        self.pushes: dict[str, str] = {}

    def samples(self, path: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """(name, sorted labels) -> value of the last push to `path`."""
        out = {}
        for family in text_string_to_metric_families(self.pushes[path]):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


@contextmanager
def push_receiver() -> Iterator[PushReceiver]:
    received: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received[self.path] = body.decode()
            self.send_response(200)
            self.end_headers()

        def do_POST(self) -> None:
            self.do_PUT()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver = PushReceiver(f"http://127.0.0.1:{server.server_address[1]}")
    receiver.pushes = received
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
