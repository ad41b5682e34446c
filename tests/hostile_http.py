"""Hostile HTTP servers on 127.0.0.1 for fault tests: wrong payload types, endless streams, 429s.

Each one is wrong in one controlled way, so a test can check that the harness counts and
classifies the fault instead of crashing, hanging or growing without bound.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from fake_http import sse

GOOD = [{"choices": [{"index": 0, "text": " tok", "finish_reason": None}]} for _ in range(4)] + [
    {"choices": [{"index": 0, "text": " tok", "finish_reason": "length"}]}
]

# One wrong type per case, each in an otherwise well-formed stream.
BAD_EVENTS: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "text": 123, "finish_reason": None}]},
    {"choices": {"0": {"text": " tok"}}},
    {"choices": [{"index": 0, "text": " tok"}], "usage": []},
    {"choices": [{"index": 0, "text": ["tok"], "finish_reason": None}]},
    {"choices": ["tok"]},
    {"choices": [{"index": 0, "text": " tok"}], "usage": {"completion_tokens": "3"}},
    {"choices": [{"index": 0, "text": " tok", "finish_reason": 7}]},
]


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._send(200, b'{"data": [{"id": "m"}]}', "application/json")

    def _read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


class WrongTypes(_Base):
    """``/v1/completions``: every third request's stream holds one event of a wrong type.

    ``posts`` counts requests received, ``bad`` those answered with a bad event.
    """

    lock = threading.Lock()
    posts = 0
    bad = 0
    _cycle = itertools.cycle(BAD_EVENTS)

    def do_POST(self) -> None:  # noqa: N802
        self._read_body()
        cls = type(self)
        with cls.lock:
            cls.posts += 1
            hostile = cls.posts % 3 == 0
            if hostile:
                cls.bad += 1
                bad = next(cls._cycle)
        events = list(GOOD)
        if hostile:
            events[2] = bad
        out = b"".join(sse(e) for e in events) + b"data: [DONE]\n\n"
        self._send(200, out, "text/event-stream")


class Endless(_Base):
    """``/v1/completions`` answered by a chunked stream that never ends, written as fast as possible."""

    posts = 0

    def do_POST(self) -> None:  # noqa: N802
        self._read_body()
        type(self).posts += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        event = sse({"choices": [{"index": 0, "text": " tok", "finish_reason": None}]}) * 200
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        try:
            while True:
                self.wfile.write(chunk)
        except OSError:
            return  # the client closed the connection: what it should do


class RetryAfter(_Base):
    """Every other request is refused with 429 (odd) or 503 (even) and a ``Retry-After`` header."""

    lock = threading.Lock()
    posts = 0
    refused = 0

    def do_POST(self) -> None:  # noqa: N802
        self._read_body()
        cls = type(self)
        with cls.lock:
            cls.posts += 1
            n = cls.posts
            if n % 2 == 0:
                cls.refused += 1
        if n % 2 == 0:
            status = 429 if n % 4 == 0 else 503
            body = json.dumps({"error": "overloaded"}).encode()
            self._send(status, body, "application/json", {"Retry-After": "7"})
            return
        out = b"".join(sse(e) for e in GOOD) + b"data: [DONE]\n\n"
        self._send(200, out, "text/event-stream")
