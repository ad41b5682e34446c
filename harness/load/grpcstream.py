"""The gRPC transport of the load users: one channel per user, server-streaming calls stamped on arrival.

Same discipline as ``httpstream``, on a different wire:

* **stamp on arrival**: ``stream_call`` appends ``time.monotonic_ns()`` the
  moment the response iterator hands over a message, before anything else.
  Calls are made without a response deserializer, so what arrives is the raw
  message bytes: even protobuf decoding waits for the protocol's interpreter,
  which the ``Finisher`` runs after the stream is over;
* **requests are bytes** too (no request serializer): the protocol builds and
  serializes each prompt's request once per process, as HTTP bodies are.

gRPC status codes become the shared error classes (``classify``), and the
record's ``status`` holds the HTTP-equivalent code (gRPC's own mapping: 429
for RESOURCE_EXHAUSTED, 503 for UNAVAILABLE, ...) so one column means the same
for every protocol: before any message arrives, UNAVAILABLE is ``connect``,
DEADLINE_EXCEEDED ``timeout``, 4xx-equivalents ``http_4xx`` and the rest
``http_5xx``; once the server has answered, a failure is ``stream_broken``
(DEADLINE_EXCEEDED stays ``timeout``, DATA_LOSS is ``bad_payload``).

TLS: channels come from ``harness.protocols.tls.grpc_channel`` (CA bundle,
server-name override), the same code the readiness probes use.

gevent: grpcio blocks the whole process unless
``grpc.experimental.gevent.init_gevent()`` runs after gevent's monkey-patching
and before the first channel. ``ensure_gevent`` does that in the user's
constructor, i.e. in each Locust process that runs users (after
``--processes`` forks), guarded by grpc's own flag so it happens once.

Importing this module imports grpc but not Locust, so it is testable in a
plain process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from harness.load.bounds import Bounds
from harness.load.httpstream import ERROR_BODY_CHARS, Outcome
from harness.load.sseframe import SseSplitter
from harness.protocols.base import Event

# grpc status -> the HTTP status it corresponds to (google.rpc / grpc-gateway mapping).
HTTP_EQUIVALENT: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def classify(code: grpc.StatusCode, messages_received: int) -> str | None:
    """The error class of a call that ended with ``code`` after ``messages_received`` messages."""
    if code == grpc.StatusCode.OK:
        return None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timeout"
    if code == grpc.StatusCode.DATA_LOSS:
        return "bad_payload"
    if messages_received:
        return "stream_broken"
    if code == grpc.StatusCode.UNAVAILABLE:
        return "connect"
    return "http_4xx" if HTTP_EQUIVALENT.get(code, 500) < 500 else "http_5xx"


@dataclass(slots=True)
class GrpcStream:
    """Raw result of one streaming call: message bytes with their arrival stamps, and how it ended."""

    sent_ns: int
    end_ns: int = 0
    arrivals_ns: list[int] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    too_large: str | None = None  # why the call was cancelled past the response bound

    @property
    def body_bytes(self) -> int:
        """The message bytes held: what the record reports, and what the Finisher's backlog bound counts."""
        return sum(len(m) for m in self.messages)

    @property
    def events(self) -> list[Event]:
        """``(arrival_ns, message_bytes)`` pairs: what a protocol's ``interpret`` reads."""
        return list(zip(self.arrivals_ns, self.messages, strict=True))

    def outcome(self) -> Outcome:
        """As the shared ``Outcome`` that ``build_record`` takes (HTTP-equivalent status)."""
        if self.too_large is not None:
            return Outcome(200, self.sent_ns, self.end_ns, SseSplitter(), "stream_too_large", self.too_large)
        error = classify(self.code, len(self.messages))
        message = None
        if error is not None:
            message = f"gRPC {self.code.name}: {self.details}"[:ERROR_BODY_CHARS]
        return Outcome(
            status=HTTP_EQUIVALENT.get(self.code, 500),
            sent_ns=self.sent_ns,
            end_ns=self.end_ns,
            splitter=SseSplitter(),  # no SSE framing; coalescing is not observable through grpcio
            error_class=error,
            error_message=message,
            body_bytes=self.body_bytes,
        )


def stream_call(
    call: Callable[..., Any],
    request: bytes,
    timeout_s: float,
    metadata: list[tuple[str, str]],
    bounds: Bounds | None = None,
) -> GrpcStream:
    """Make one server-streaming call and stamp every message on arrival; never raises for RPC errors.

    ``call`` is ``channel.unary_stream(method)`` (bytes in, bytes out). The
    loop body is one clock read, two appends and the bound check (two integer
    subtractions and compares): nothing that could delay the next message's
    stamp or another stream's read. Past ``bounds`` the call is cancelled and
    its messages dropped (``stream_too_large``).
    """
    bounds = bounds or Bounds()
    out = GrpcStream(sent_ns=time.monotonic_ns())
    arrivals, messages = out.arrivals_ns, out.messages
    bytes_left, msgs_left = bounds.max_bytes, bounds.max_reads
    responses: Any = None
    try:
        responses = call(request, timeout=timeout_s, metadata=metadata)
        for msg in responses:
            arrivals.append(time.monotonic_ns())
            messages.append(msg)
            bytes_left -= len(msg)
            msgs_left -= 1
            if bytes_left < 0 or msgs_left < 0:
                out.too_large = bounds.message(bounds.max_bytes - bytes_left, bounds.max_reads - msgs_left)
                responses.cancel()
                arrivals.clear()
                messages.clear()
                break
    except grpc.RpcError as err:
        out.code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        out.details = str(err.details() if callable(getattr(err, "details", None)) else err)
    out.end_ns = time.monotonic_ns()
    return out


def auth_metadata(headers: dict[str, str]) -> list[tuple[str, str]]:
    """Request headers (``Authorization: Bearer ...``) as gRPC metadata: keys must be lower-case.

    Values are secrets: never logged, never written.
    """
    return [(k.lower(), v) for k, v in headers.items()]


def ensure_gevent() -> None:
    """Make grpcio cooperate with gevent in this process (once; see module docstring)."""
    from grpc._cython import cygrpc
    from grpc.experimental import gevent as grpc_gevent

    if not cygrpc.g_gevent_activated:
        grpc_gevent.init_gevent()
