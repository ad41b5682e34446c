"""Interpreting a finished OpenAI stream, and the OpenAI request body.

Why two phases: the arrival time of a token is the moment the socket read
returned, and anything done between that read and the timestamp (JSON
decoding, tokenizing) shows up as fake inter-token latency and, under load,
as event-loop lag that delays *other* streams' reads. So the hot path
(``httpstream.StreamClient.post`` + ``sseframe.SseSplitter.feed``) only
stamps and appends bytes; all JSON work happens here, once the response is
over, off the read path (the users hand finished streams to a finisher
greenlet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from harness.load.sseframe import DONE, event_data

if TYPE_CHECKING:
    from harness.load.plan import LoadPlan
    from harness.load.prompts import PromptSpec


@dataclass(slots=True)
class StreamResult:
    """What a finished OpenAI stream said, with timing kept per content chunk."""

    chunk_times_ns: list[int] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_source: str = "none"  # "usage" (final usage event) | "usage_per_chunk" | "none"
    per_chunk_usage: bool = False
    done: bool = False
    finished: bool = False
    error: str | None = None

    @property
    def complete(self) -> bool:
        """The server said it was finished: ``[DONE]``, or a finish_reason/final usage event."""
        return self.done or self.finished


def _piece(choice: dict[str, Any], api: str) -> str:
    if api == "chat":
        delta = choice.get("delta") or {}
        return delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or ""
    return choice.get("text") or ""


def parse_stream_json(events: list[tuple[int, bytes]]) -> tuple[list[tuple[int, Any]], bool, str | None]:
    """Decode every data event's JSON: ``([(arrival_ns, obj)...], saw_done, error)``.

    Why one ``orjson.loads`` for the whole stream: it runs once per request on
    the same event loop as every other stream's reads, and a single call over
    ``[e1,e2,...]`` costs a fraction of 128 separate calls. The join is only
    trusted when every payload looks like one object and the element count
    matches; otherwise (a malformed event) events are decoded one by one so the
    error names the event. Objects before the first bad event are kept.
    """
    stamps: list[int] = []
    payloads: list[bytes] = []
    done = False
    for arrival_ns, raw in events:
        if raw.startswith(b"data: {") and b"\n" not in raw:
            data: bytes | None = raw[6:]  # the common case: one data line holding an object
        else:
            data = event_data(raw)
            if data is None:
                continue  # comments / keep-alives / other fields
            if data.strip() == DONE:
                done = True
                continue
        stamps.append(arrival_ns)
        payloads.append(data)
    if all(p[:1] == b"{" and p.rstrip()[-1:] == b"}" for p in payloads):
        try:
            objs = orjson.loads(b"[" + b",".join(payloads) + b"]")
        except orjson.JSONDecodeError:
            objs = None
        if objs is not None and len(objs) == len(payloads):
            return list(zip(stamps, objs, strict=True)), done, None
    parsed: list[tuple[int, Any]] = []
    for arrival_ns, data in zip(stamps, payloads, strict=True):
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            return parsed, done, f"malformed JSON in stream event: {err}: {data[:200]!r}"
        if not isinstance(obj, dict):
            return parsed, done, f"stream event is not a JSON object: {data[:200]!r}"
        parsed.append((arrival_ns, obj))
    return parsed, done, None


def interpret_openai(events: list[tuple[int, bytes]], api: str) -> StreamResult:
    """Turn raw SSE events of ``/v1/completions`` or ``/v1/chat/completions`` into chunks and tokens.

    A *content chunk* is an event that carries text or advances
    ``usage.completion_tokens``. Its token count is the usage delta when the
    server sends continuous usage (vLLM does), else 1. Role-only and
    usage-only events carry no tokens and are not chunks.
    """
    res = StreamResult()
    parsed, res.done, res.error = parse_stream_json(events)
    texts: list[str] = []
    times = res.chunk_times_ns
    tokens = res.chunk_tokens
    last_ct = 0
    all_usage = True
    chat = api == "chat"
    for arrival_ns, obj in parsed:
        if obj.get("error") is not None:
            res.error = f"error event in stream: {str(obj['error'])[:500]}"
            break
        choices = obj.get("choices")
        usage = obj.get("usage")
        ct: int | None = None
        if usage.__class__ is dict:
            ct = usage.get("completion_tokens")
            if ct.__class__ is not int:
                ct = None
            pt = usage.get("prompt_tokens")
            if pt.__class__ is int:
                res.prompt_tokens = pt
        if not choices:
            if ct is not None:
                res.completion_tokens = ct
                res.usage_source = "usage"
                res.finished = True
            continue
        choice = choices[0] if choices[0].__class__ is dict else {}
        if chat:
            piece = _piece(choice, api)
        else:
            piece = choice.get("text") or ""
        if ct is None:
            if piece:
                times.append(arrival_ns)
                tokens.append(1)
                all_usage = False
                texts.append(piece)
        else:
            delta = ct - last_ct
            if piece or delta > 0:
                times.append(arrival_ns)
                tokens.append(delta if delta > 0 else 0)
                if piece:
                    texts.append(piece)
            last_ct = ct
            if res.usage_source != "usage":
                res.completion_tokens = ct
                res.usage_source = "usage_per_chunk"
        if choice.get("finish_reason"):
            res.finished = True
    res.text = "".join(texts)
    res.per_chunk_usage = bool(tokens) and all_usage
    return res


# --- the OpenAI request ---------------------------------------------------------------------


def openai_body(plan: LoadPlan, spec: PromptSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": plan.model,
        "max_tokens": spec.output_tokens,
        "temperature": plan.temperature,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    if plan.api == "chat":
        body["messages"] = spec.messages or [{"role": "user", "content": spec.text}]
    else:
        body["prompt"] = spec.prompt if spec.prompt is not None else spec.text
    if plan.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = spec.output_tokens
    return body
