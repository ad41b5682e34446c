"""Test double: an OpenAI-like endpoint that records every request and echoes its Authorization back.

What it proves: a server that puts the caller's credential into a 401 body or an SSE error event
(as some proxies and debug middlewares do) hands that credential to the harness, and the test
can then check it was scrubbed from records and logs; and what the harness sent on the wire
(headers, Host) is kept in ``requests`` for the test to inspect.
What it does not prove: anything about real servers' timing or protocol details beyond the
small completions stream it writes.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fake_http import sse

GOOD = [{"choices": [{"index": 0, "text": " tok", "finish_reason": None}]} for _ in range(3)] + [
    {"choices": [{"index": 0, "text": " tok", "finish_reason": "length"}]}
]


@dataclass
class Captured:
    """One request as it arrived: method, path, every header (repeated names kept) and the body."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def raw(self) -> bytes:
        lines = [f"{self.method} {self.path}", *(f"{k}: {v}" for k, v in self.headers)]
        return "\n".join(lines).encode("latin-1", "replace") + b"\n\n" + self.body


@dataclass
class Capture:
    """What the server received; ``echoed`` counts the answers that carried the Authorization back."""

    requests: list[Captured] = field(default_factory=list)
    echoed_401: int = 0
    echoed_sse: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def echo_auth_server(capture: Capture) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to ``capture``: POSTs cycle through a 401 echo, an SSE echo, a good stream."""
    counter = itertools.count()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _keep(self, body: bytes) -> str:
            with capture.lock:
                capture.requests.append(Captured(self.command, self.path, list(self.headers.items()), body))
            return self.headers.get("Authorization") or ""

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self._keep(b"")
            if self.path.endswith("/v1/models"):
                self._send(200, b'{"data": [{"id": "sim-model"}]}', "application/json")
            else:
                self._send(404, b"{}", "application/json")

        def do_POST(self) -> None:  # noqa: N802
            auth = self._keep(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            turn = next(counter) % 3
            if turn == 0:
                with capture.lock:
                    capture.echoed_401 += 1
                body = json.dumps({"error": f"invalid credentials: Authorization: {auth}"}).encode()
                self._send(401, body, "application/json")
                return
            events = list(GOOD)
            if turn == 1:
                with capture.lock:
                    capture.echoed_sse += 1
                events = [GOOD[0], {"error": {"message": f"upstream refused {auth}", "code": 401}}]
            out = b"".join(sse(e) for e in events) + b"data: [DONE]\n\n"
            self._send(200, out, "text/event-stream")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    return Handler


def serve_capture(capture: Capture) -> Iterator[str]:
    """Run the echoing server on 127.0.0.1 until the generator is closed; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), echo_auth_server(capture))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
