"""Tiny HTTP servers on 127.0.0.1 for protocol tests: an OpenAI-like stream whose usage can lie.

Why not the sim: these cases need a server that is *wrong* in a controlled way (usage that
disagrees with the text, vLLM 0.4.x's HTTP 400 for ``stream_options``), or that replays bytes
recorded from a real server.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class OpenAILike(BaseHTTPRequestHandler):
    """``/v1/completions`` that streams ``words`` pieces of `` tok`` while its usage claims ``claimed`` tokens.

    ``reject_stream_options``: answer a request carrying ``stream_options`` with vLLM 0.4.x's HTTP 400.
    """

    protocol_version = "HTTP/1.1"
    words = 5
    claimed = 10
    reject_stream_options = False
    bodies: list[dict[str, Any]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._send(200, b'{"data": [{"id": "m"}]}', "application/json")

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        if self.reject_stream_options and "stream_options" in body:
            msg = b"{\"object\":\"error\",\"message\":\"[{'type': 'extra_forbidden', 'loc': ('body', 'stream_options')}]\",\"code\":400}"
            self._send(400, msg, "application/json")
            return
        per = self.claimed // self.words
        out = b"".join(
            sse({"choices": [{"index": 0, "text": " tok", "finish_reason": None}], "usage": {"prompt_tokens": 3, "completion_tokens": per * (i + 1)}})
            for i in range(self.words)
        )  # fmt: skip
        out += sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": self.claimed}})
        self._send(200, out + b"data: [DONE]\n\n", "text/event-stream")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


def serve(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
