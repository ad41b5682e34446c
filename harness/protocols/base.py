"""What a protocol is: one ``ProtocolSpec`` per wire API, owning every rule that API has.

Why one object: before this package the rules of a protocol (its path, its
request body, how its stream is read, when it is over, how errors look, how
it says it is ready) were spread over the scenario, the load users, the
collector and the backends as ``api == ...`` branches, so adding a protocol
touched seven files. A spec keeps them together; the load user, the
readiness wait and the scenario only ever ask the spec.

The hot path stays outside: a spec builds request *bytes* once per prompt
(before any timing starts) and interprets a stream only after it is over
(``interpret`` runs in the per-process ``Finisher``, off the read path). The
transports that read sockets and stamp arrivals (``harness.load.httpstream``,
``harness.load.grpcstream``) know nothing about any protocol.

This module imports neither gevent, grpc nor Locust, so the scenario can
validate protocol names cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from harness.load.plan import LoadPlan
    from harness.load.prompts import PromptSpec

Transport = Literal["http", "grpc"]
PromptStyle = Literal["text", "chat"]
Event = tuple[int, bytes]  # (arrival_ns, raw SSE event or raw gRPC message)


class ProtocolError(ValueError):
    """A protocol name or a protocol-level setting that cannot work; names the field and value."""


class PayloadError(ValueError):
    """A stream event whose content has the wrong shape (a field of the wrong type)."""


BAD_PAYLOAD_CHARS = 300


def typed(obj: Mapping[str, Any], key: str, kind: type) -> Any:
    """``obj[key]`` if absent/null or exactly of ``kind`` (``bool`` is not an ``int``), else ``PayloadError``.

    Why strict: a server that sends ``"text": 123`` or ``"usage": []`` is
    broken, and quietly skipping the field would record the request as a
    good one with fewer tokens. Interpreters read known fields through this;
    ``ProtocolSpec.read_stream`` turns the error into a ``bad_payload`` record.
    """
    value = obj.get(key)
    if value is None or value.__class__ is kind:
        return value
    raise wrong_type(key, value, kind)


def wrong_type(key: str, value: Any, kind: type) -> PayloadError:
    """``typed``'s error, for interpreters that inline its check on their hot fields."""
    return PayloadError(f"field {key!r} is {type(value).__name__}, expected {kind.__name__}: {value!r:.80}")


@dataclass(slots=True)
class StreamResult:
    """What a finished stream said, with timing kept per content chunk.

    ``client_tokens`` is the client's *own* output count where the protocol
    makes one exist without a tokenizer (TGI: one event per token). It is
    never taken from the server's usage figures, which would make the
    server-vs-client agreement check circular; ``None`` means "retokenize the
    text, or n/a" (``recordbuild.finalize_records``).
    """

    chunk_times_ns: list[int] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_source: str = "none"  # "usage" (final figure) | "usage_per_chunk" (cut stream) | "none"
    per_chunk_usage: bool = False
    client_tokens: int | None = None
    done: bool = False
    finished: bool = False
    error: str | None = None

    @property
    def complete(self) -> bool:
        """The server said it was finished (the protocol's end-of-stream rule was met)."""
        return self.done or self.finished


@dataclass(frozen=True)
class TlsOptions:
    """TLS for one endpoint. ``insecure_skip_verify`` turns verification off and is flagged in the report."""

    ca_bundle: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class Endpoint:
    """Where a server listens, as a readiness probe needs it (auth headers never in ``repr``)."""

    base_url: str
    model: str
    grpc_target: str | None = None
    grpc_tls: bool = False
    tls: TlsOptions = field(default_factory=TlsOptions)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class HttpProbe:
    """Ready when ``GET base_url + path`` answers 2xx."""

    path: str


@dataclass(frozen=True)
class GrpcProbe:
    """Ready when a unary call of ``method`` succeeds and ``check`` finds nothing wrong with the reply.

    ``request`` builds the serialized request; ``check`` returns why the reply
    is not (yet) ready, or None. ``skip_unimplemented``: a server that does
    not implement the method (an optional service such as gRPC health) passes.
    """

    method: str
    request: Callable[[Endpoint], bytes]
    check: Callable[[bytes], str | None]
    skip_unimplemented: bool = False


Probe = HttpProbe | GrpcProbe


@dataclass(frozen=True)
class ProtocolSpec:
    """One wire protocol. Subclasses override the three methods; the fields say everything else.

    * ``transport``: ``"http"`` (a POST answered as SSE) or ``"grpc"`` (a server-streaming call);
    * ``path``: the HTTP path, or the gRPC method as ``/package.Service/Method``;
    * ``prompt_style``: ``"text"`` (one prompt string) or ``"chat"`` (a messages list);
    * ``token_source``: where a record's output count comes from, for the docs and the report;
    * error mapping: a failed call's status is classified by the transport's
      table (HTTP: ``httpstream``; gRPC: ``grpcstream.classify``, with the
      HTTP-equivalent status); errors a server reports *inside* a stream
      (an error event, a stop reason ERROR, an undecodable message) are the
      interpreter's (``StreamResult.error``, recorded as ``bad_payload``), and a
      stream that ends without the protocol's end-of-stream rule being met is
      ``stream_broken``;
    * ``readiness``: the probes, in order, that say the server can take load;
    * ``stream_usage``: whether the request has an optional usage block that
      older servers reject (OpenAI's ``stream_options``), decided per cell.
    """

    name: str
    transport: Transport
    path: str
    prompt_style: PromptStyle
    token_source: str
    readiness: tuple[Probe, ...]
    stream_usage: bool = False

    def build_request(self, plan: LoadPlan, prompt: PromptSpec) -> bytes:
        """The serialized request for one prompt (JSON body or protobuf message)."""
        raise NotImplementedError

    def interpret(self, events: Sequence[Event]) -> StreamResult:
        """Chunks, counts and the end-of-stream verdict from a finished (or cut) stream."""
        raise NotImplementedError

    def read_stream(self, events: Sequence[Event]) -> StreamResult:
        """``interpret``, guarded: whatever a hostile stream does, the answer is a well-typed result.

        Why here, once, and not per field: before this guard a stream event
        with a wrong type (``"text": 123``, ``"choices": {...}``) raised inside
        the finisher, the request's record was never made and the step
        counted fewer requests than it sent (and waited out its watchdog).
        Any exception from the interpreter, or a result whose fields have the
        wrong types, becomes a result with ``error`` set (a ``bad_payload``
        record with a short message); the other requests are unaffected.
        """
        try:
            res = self.interpret(events)
            check_result(res)
        except Exception as err:  # noqa: BLE001 - any interpreter failure is the payload's fault
            return StreamResult(error=f"bad payload: {type(err).__name__}: {err}"[:BAD_PAYLOAD_CHARS])
        return res

    def http_headers(self) -> dict[str, str]:
        """Fixed request headers of an HTTP protocol (auth comes separately)."""
        return {"Content-Type": "application/json", "Accept": "text/event-stream"}

    def grpc_metadata(self, plan: LoadPlan) -> list[tuple[str, str]]:
        """Fixed call metadata of a gRPC protocol (auth comes separately)."""
        return []

    def probe_stream_usage(
        self, base_url: str, model: str, client: Any, extensions: dict[str, Any] | None = None
    ) -> tuple[bool, str]:
        """Whether the server takes the optional usage block (``client``: an ``httpx.Client``), and why."""
        return False, f"protocol '{self.name}' has no optional usage block"


def _count(value: Any, name: str) -> None:
    if value is not None and value.__class__ is not int:
        raise PayloadError(f"{name} is {type(value).__name__}, expected int")


def check_result(res: StreamResult) -> None:
    """Raise ``PayloadError`` unless every field a record is built from has its type (cheap: one pass)."""
    if res.text.__class__ is not str:
        raise PayloadError(f"streamed text is {type(res.text).__name__}, expected str")
    times, tokens = res.chunk_times_ns, res.chunk_tokens
    if len(times) != len(tokens):
        raise PayloadError(f"{len(times)} chunk stamps but {len(tokens)} chunk token counts")
    if tokens and {*map(type, tokens)} != {int}:  # C-level: this runs once per token of every stream
        raise PayloadError("a chunk token count is not an int")
    _count(res.prompt_tokens, "prompt_tokens")
    _count(res.completion_tokens, "completion_tokens")
    _count(res.client_tokens, "client_tokens")
    if res.error is not None and res.error.__class__ is not str:
        res.error = str(res.error)


def prompt_text(prompt: PromptSpec) -> str:
    """The prompt as one string (text protocols): the prompt, or the message contents joined."""
    return prompt.prompt if prompt.prompt is not None else prompt.text
