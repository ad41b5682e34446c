"""``caikit-http``: Caikit's ``POST /api/v1/task/server-streaming-text-generation``, answered as SSE.

Body ``{"model_id", "inputs", "parameters": {"max_new_tokens", "min_new_tokens"}}``;
each ``event: message`` carries one ``GeneratedTextStreamResult`` as JSON
(stream rules in ``harness.protocols.caikit``; lines end in CRLF, every field
is present, ``finish_reason`` is the enum's name). Errors found once the
stream has started come as **HTTP 200 with an ``event: error``** whose data
holds ``details`` and ``code`` (an unknown model is one): the interpreter
turns that into the record's error, so it is not mistaken for a short answer.

Ready: ``GET /health``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from harness.load.sseframe import event_data
from harness.protocols.base import Event, HttpProbe, ProtocolSpec, StreamResult, prompt_text, typed
from harness.protocols.caikit import CaikitStream
from harness.protocols.jsonstream import parse_stream_json

if TYPE_CHECKING:
    from harness.load.plan import LoadPlan
    from harness.load.prompts import PromptSpec

PATH = "/api/v1/task/server-streaming-text-generation"


def caikit_body(plan: LoadPlan, prompt: PromptSpec) -> dict[str, Any]:
    n = prompt.output_tokens
    params: dict[str, Any] = {"max_new_tokens": n}
    if plan.ignore_eos:
        params["min_new_tokens"] = n
    if plan.temperature > 0:
        params["decoding_method"] = "SAMPLING"
        params["temperature"] = plan.temperature
    return {"model_id": plan.model, "inputs": prompt_text(prompt), "parameters": params}


def _event_name(raw: bytes) -> bytes:
    for line in raw.split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].strip()
    return b"message"


def interpret_caikit_http(events: list[Event]) -> StreamResult:
    """Chunks and counts from the SSE events of one stream (see module docstring)."""
    stream = CaikitStream()
    messages: list[Event] = []
    for arrival_ns, raw in events:
        name = _event_name(raw) if raw.startswith(b"event:") or b"\nevent:" in raw else b"message"
        if name == b"error":
            data = event_data(raw) or b""
            try:
                obj = orjson.loads(data)
                why = f"{obj.get('code')}: {obj.get('details')}" if isinstance(obj, dict) else repr(obj)
            except orjson.JSONDecodeError:
                why = repr(data[:200])
            stream.res.error = f"error event in stream: {why[:500]}"
            break
        messages.append((arrival_ns, raw))
    parsed, _done, error = parse_stream_json(messages)
    for arrival_ns, obj in parsed:
        details = typed(obj, "details", dict) or {}
        stream.add(
            arrival_ns,
            typed(obj, "generated_text", str) or "",
            typed(details, "generated_tokens", int) or 0,
            typed(details, "input_token_count", int) or 0,
            typed(details, "finish_reason", str) or "",
        )
    if error is not None and stream.res.error is None:
        stream.res.error = error
    return stream.result(bool(parsed))


@dataclass(frozen=True)
class CaikitHttpProtocol(ProtocolSpec):
    def build_request(self, plan: LoadPlan, prompt: PromptSpec) -> bytes:
        return orjson.dumps(caikit_body(plan, prompt))

    def interpret(self, events: list[Event]) -> StreamResult:
        return interpret_caikit_http(events)


SPEC = CaikitHttpProtocol(
    name="caikit-http",
    transport="http",
    path=PATH,
    prompt_style="text",
    token_source="usage (details.generated_tokens of the last message)",
    readiness=(HttpProbe("/health"),),
)
