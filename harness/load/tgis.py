"""TGIS's gRPC ``fmaas.GenerationService/GenerateStream`` for the load users.

Same discipline as the HTTP users, on a different wire:

* **stamp on arrival**: ``stream_generate`` appends ``time.monotonic_ns()``
  the moment the response iterator hands over a message, before any field is
  read; everything else (``interpret_tgis``) happens after the stream ends;
* **the first message is an acknowledgement** (``input_token_count`` only, no
  tokens): it is not the first token. A chunk is a message that advances the
  cumulative ``generated_token_count``; its token count is that advance;
* **fixed length**: TGIS has no ``ignore_eos``; ``min_new_tokens ==
  max_new_tokens`` asks for exactly that many tokens;
* **counts**: output tokens are the last message's ``generated_token_count``
  (``token_source="usage"`` when the stream finished, ``"usage_per_chunk"``
  when it was cut), prompt tokens the ack's ``input_token_count``.

gRPC status codes become the shared error classes (``ERROR_CLASSES``), and the
record's ``status`` holds the HTTP-equivalent code (gRPC's own mapping: 429
for RESOURCE_EXHAUSTED, 503 for UNAVAILABLE, ...) so one column means the same
for every API: before any message arrives, UNAVAILABLE is ``connect``,
DEADLINE_EXCEEDED ``timeout``, 4xx-equivalents ``http_4xx`` and the rest
``http_5xx``; once the server has answered, a failure is ``stream_broken``
(DEADLINE_EXCEEDED stays ``timeout``, DATA_LOSS is ``bad_payload``).

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
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from harness.load.collector import request_key
from harness.load.httpstream import ERROR_BODY_CHARS, Outcome
from harness.load.sse import StreamResult
from harness.load.sseframe import SseSplitter
from harness.sim.proto import generation_pb2 as pb
from harness.sim.proto import generation_pb2_grpc as pb_grpc

METHOD = "/fmaas.GenerationService/GenerateStream"
U = TypeVar("U", bound=type)

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


def tgis_request(plan: Any, spec: Any) -> Any:
    """The ``SingleGenerationRequest`` for one prompt (``plan``: LoadPlan, ``spec``: PromptSpec)."""
    n = spec.output_tokens
    stopping = pb.StoppingCriteria(max_new_tokens=n, min_new_tokens=n if plan.ignore_eos else 0)
    params = pb.Parameters(
        method=pb.SAMPLE if plan.temperature > 0 else pb.GREEDY,
        stopping=stopping,
        sampling=pb.SamplingParameters(temperature=plan.temperature) if plan.temperature > 0 else None,
    )
    text = spec.prompt if spec.prompt is not None else spec.text
    return pb.SingleGenerationRequest(
        model_id=plan.model, request=pb.GenerationRequest(text=text), params=params
    )


@dataclass(slots=True)
class GrpcStream:
    """Raw result of one ``GenerateStream`` call: messages with their arrival stamps, and how it ended."""

    sent_ns: int
    end_ns: int = 0
    arrivals_ns: list[int] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""

    def outcome(self) -> Outcome:
        """As the shared ``Outcome`` that ``build_record`` takes (HTTP-equivalent status)."""
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
            body_bytes=sum(m.ByteSize() for m in self.messages),
        )


def stream_generate(stub: Any, request: Any, timeout_s: float, metadata: list[tuple[str, str]]) -> GrpcStream:
    """Call ``GenerateStream`` and stamp every message on arrival; never raises for RPC errors.

    The loop body is one clock read and two appends: nothing that could
    delay the next message's stamp or another stream's read.
    """
    out = GrpcStream(sent_ns=time.monotonic_ns())
    arrivals, messages = out.arrivals_ns, out.messages
    try:
        for msg in stub.GenerateStream(request, timeout=timeout_s, metadata=metadata):
            arrivals.append(time.monotonic_ns())
            messages.append(msg)
    except grpc.RpcError as err:
        out.code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        out.details = str(err.details() if callable(getattr(err, "details", None)) else err)
    out.end_ns = time.monotonic_ns()
    return out


def interpret_tgis(stream: GrpcStream) -> StreamResult:
    """Chunks and counts from a finished (or cut) stream; see the module docstring."""
    res = StreamResult(per_chunk_usage=True)
    texts: list[str] = []
    last = 0
    for arrival_ns, msg in zip(stream.arrivals_ns, stream.messages, strict=True):
        if msg.input_token_count and res.prompt_tokens is None:
            res.prompt_tokens = int(msg.input_token_count)
        count = int(msg.generated_token_count)
        if count > last:
            res.chunk_times_ns.append(arrival_ns)
            res.chunk_tokens.append(count - last)
            last = count
        if msg.text:
            texts.append(msg.text)
        if msg.stop_reason == pb.ERROR:
            res.error = "server ended the stream with stop_reason ERROR"
        elif msg.stop_reason != pb.NOT_FINISHED:
            res.finished = True
    if stream.messages:
        res.completion_tokens = last
        res.usage_source = "usage" if res.finished else "usage_per_chunk"
    res.text = "".join(texts)
    return res


def ensure_gevent() -> None:
    """Make grpcio cooperate with gevent in this process (once; see module docstring)."""
    from grpc._cython import cygrpc
    from grpc.experimental import gevent as grpc_gevent

    if not cygrpc.g_gevent_activated:
        grpc_gevent.init_gevent()


def tgis_user_class(base: U) -> U:
    """The abstract TGIS Locust user, built on ``base`` (``users.StreamingUser``) for its pacing.

    ``StreamingUser``'s HTTP task is inherited by every subclass through
    Locust's task collection, so the class's ``tasks`` are replaced with the
    gRPC one after it is made. A factory, so this module never imports Locust.
    """
    import gevent

    class TgisUser(base):  # type: ignore[valid-type, misc]
        abstract = True
        path = METHOD

        def __init__(self, environment: Any) -> None:
            super().__init__(environment)
            ensure_gevent()
            plan = self.ctx.plan
            # A local subchannel pool gives each user its own HTTP/2 connection, as each
            # HTTP user has its own socket; a shared one would multiplex every stream on one.
            self.channel = grpc.insecure_channel(
                plan.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            self.stub = pb_grpc.GenerationServiceStub(self.channel)
            # gRPC metadata keys must be lower-case; values are auth and never logged.
            self.metadata = [(k.lower(), v) for k, v in self.ctx.headers.items()]

        def grpc_request(self) -> None:
            scheduled, self._pending = self._pending, None
            if scheduled is None:
                return  # the very first task runs before any wait: nothing is due yet
            ctx = self.ctx
            state = ctx.state
            request_id = state.next_request_id()
            spec = ctx.prompts[(request_id + state.worker_index) % len(ctx.prompts)]
            request = tgis_request(ctx.plan, spec)
            wait_ns = scheduled - time.monotonic_ns()
            if wait_ns > 0:
                gevent.sleep(wait_ns / 1e9)
            # x-request-id joins the record to the server's log, as the HTTP users' X-Request-Id does.
            metadata = [*self.metadata, ("x-request-id", request_key(ctx.plan.step_id, request_id))]
            stream = stream_generate(self.stub, request, ctx.plan.timeout_s, metadata)
            if ctx.plan.kind == "concurrency":
                scheduled = stream.sent_ns  # closed loop: the request is due when it is sent
            outcome = stream.outcome()
            result = interpret_tgis(stream) if stream.messages else None
            self.record(request_id, spec, scheduled, outcome, result, request_type="grpc", name=METHOD)

        def on_stop(self) -> None:
            self.channel.close()
            super().on_stop()

    TgisUser.tasks = [TgisUser.grpc_request]
    TgisUser.__module__ = __name__
    return TgisUser  # type: ignore[return-value]
