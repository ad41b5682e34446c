"""A minimal HTTP/1.1 server connection for the sim, on raw asyncio protocols.

Why hand-written: a general web stack costs tens of microseconds per request
and per streamed chunk, and the sim must never be the bottleneck of the
benchmark it calibrates. This speaks only what LLM clients use: keep-alive,
``Content-Length`` request bodies, and ``Transfer-Encoding: chunked``
streaming responses, one HTTP chunk per SSE write, as uvicorn does for vLLM.
One request is served at a time per connection; pipelined bytes wait.

Arrival stamps are taken in ``data_received``, before anything else, and the
request is parsed and handled later, one request per event-loop turn
(``ParseQueue``). Why: when a burst of requests arrives together (closed-loop
streams end together), handling each one inline (JSON, plan, first write:
~0.2 ms) would stamp the last of 100 requests 20 ms after its bytes arrived,
and handling a whole burst in one turn would keep the loop from even reading
the requests that arrive meanwhile. That delay is the sim's, not the
client's, yet it would show up as client error in the fidelity benchmark, and
the request's due times (arrival + TTFT) would start late.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MAX_HEADER = 64 * 1024
MAX_BODY = 64 * 1024 * 1024

REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    411: b"Length Required",
    413: b"Payload Too Large",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    arrival_ns: int
    keep_alive: bool


class Handler(Protocol):
    def handle(self, conn: Connection, req: HttpRequest) -> None: ...


class ParseQueue:
    """Connections with a request waiting, parsed one per loop turn so that reads (and stamps) interleave.

    A callback scheduled with ``call_soon`` runs in the next loop turn, after
    that turn's I/O poll; handling one request per turn therefore lets every
    socket that became readable meanwhile be read and stamped first.
    """

    def __init__(self) -> None:
        self._waiting: deque[Connection] = deque()
        self._armed = False

    def add(self, conn: Connection) -> None:
        self._waiting.append(conn)
        self._arm()

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._armed = False
        if self._waiting:
            self._waiting.popleft()._parse()
        if self._waiting:
            self._arm()


class Connection(asyncio.Protocol):
    """One client connection. The handler must end every request with ``respond``,
    ``end_stream``, ``close`` or ``reset``; only then is the next request parsed."""

    def __init__(self, handler: Handler, connections: set[Connection], queue: ParseQueue) -> None:
        self.handler = handler
        self.connections = connections
        self.queue = queue
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.keep_alive = True
        self.on_lost: list[Callable[[], None]] = []
        self.read_ns = 0  # stamp of the latest read: when the waiting bytes were last topped up
        self.parse_pending = False

    # asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports don't subclass asyncio's
        self.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.read_ns = time.monotonic_ns()
        self.buf += data
        if not self.busy:
            self._schedule_parse()

    def _schedule_parse(self) -> None:
        if not self.parse_pending:
            self.parse_pending = True
            self.queue.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        callbacks, self.on_lost = self.on_lost, []
        for cb in callbacks:
            cb()

    # parsing ----------------------------------------------------------------
    def _parse(self) -> None:
        self.parse_pending = False
        if self.closed or self.busy:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEADER:
                self._fail(413, b"headers too large")
            return
        arrival = self.read_ns  # the read that completed the head (or a later one, for pipelined bytes)
        head = bytes(self.buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._fail(400, b"bad request line")
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self._fail(400, b"bad header line")
                return
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._fail(411, b"chunked request bodies are not supported; send Content-Length")
            return
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            self._fail(400, b"bad Content-Length")
            return
        if length < 0 or length > MAX_BODY:
            self._fail(413, b"body too large")
            return
        total = end + 4 + length
        if len(self.buf) < total:
            if headers.get("expect", "").lower() == "100-continue" and len(self.buf) == end + 4:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        conn_hdr = headers.get("connection", "").lower()
        keep = parts[2] == "HTTP/1.1" and conn_hdr != "close" or conn_hdr == "keep-alive"
        self.keep_alive = keep
        self.busy = True
        path = parts[1].split("?", 1)[0]
        self.handler.handle(self, HttpRequest(parts[0], path, headers, body, arrival, keep))

    def _fail(self, status: int, message: bytes) -> None:
        self.keep_alive = False
        self.busy = True
        self.respond(status, b'{"error":"' + message + b'"}')

    # writing ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _head(self, status: int, extra: bytes) -> bytes:
        conn = b"" if self.keep_alive else b"connection: close\r\n"
        return b"HTTP/1.1 %d %s\r\nserver: tokenbench-sim\r\n%s%s\r\n" % (
            status,
            REASONS.get(status, b"Status"),
            extra,
            conn,
        )

    def respond(self, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
        """A whole response with ``Content-Length``; then the connection is free again."""
        extra = b"content-type: %s\r\ncontent-length: %d\r\n" % (content_type, len(body))
        self.write(self._head(status, extra) + body)
        self.done()

    def start_stream(self, content_type: bytes) -> None:
        self.write(self._head(200, b"content-type: %s\r\ntransfer-encoding: chunked\r\n" % content_type))

    def stream_chunk(self, data: bytes) -> None:
        self.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self, data: bytes = b"") -> None:
        self.write((b"%x\r\n%s\r\n" % (len(data), data) if data else b"") + b"0\r\n\r\n")
        self.done()

    def done(self) -> None:
        """Finish the current request: close if not keep-alive, else parse any waiting request."""
        self.busy = False
        if not self.keep_alive:
            self.close()
        elif self.buf and not self.closed:
            self._schedule_parse()

    def close(self) -> None:
        """Graceful close (FIN after buffered data)."""
        self.busy = True
        if self.transport is not None and not self.closed:
            self.transport.close()

    def reset(self) -> None:
        """Abortive close: SO_LINGER 0 makes the kernel send RST, not FIN."""
        self.busy = True
        if self.transport is None or self.closed:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.transport.abort()
