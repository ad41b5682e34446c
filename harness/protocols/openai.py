"""The OpenAI streaming API shared by ``completions`` and ``chat``: request body and stream interpreter.

Stream rules (vLLM's, which the sim copies):

* a *content chunk* is an event that carries text or advances
  ``usage.completion_tokens``; its token count is the usage delta when the
  server sends continuous usage, else 1. Role-only and usage-only events
  carry no tokens and are not chunks;
* the stream is over at ``[DONE]``, a ``finish_reason`` or a final usage
  event (``choices: []``); anything else is a cut stream;
* ``{"error": ...}`` in the stream is an error the server reported;
* the client's own count is the streamed text retokenized after the step
  (``StreamResult.client_tokens`` stays None): chunk counts are the server's
  usage deltas, so comparing them with usage would be circular.

``stream_options`` (``include_usage`` + ``continuous_usage_stats``) is sent
only when the plan says the server takes it (``LoadPlan.stream_usage``):
vLLM 0.4.x answers it with HTTP 400.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from harness.protocols.base import (
    Event,
    HttpProbe,
    PayloadError,
    ProtocolSpec,
    StreamResult,
    typed,
    wrong_type,
)
from harness.protocols.jsonstream import parse_stream_json

if TYPE_CHECKING:
    from harness.load.plan import LoadPlan
    from harness.load.prompts import PromptSpec

READINESS = (HttpProbe("/v1/models"),)
STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}


def text_piece(choice: dict[str, Any]) -> str:
    """``/v1/completions``: the chunk's text."""
    text = choice.get("text")
    if text is None:
        return ""
    if text.__class__ is not str:
        raise wrong_type("text", text, str)
    return text


def chat_piece(choice: dict[str, Any]) -> str:
    """``/v1/chat/completions``: the delta's content (or reasoning content, which is output too)."""
    delta = choice.get("delta")
    if delta is None:
        return ""
    if delta.__class__ is not dict:
        raise wrong_type("delta", delta, dict)
    content = delta.get("content")
    if content is not None and content.__class__ is str and content:
        return content  # the common case; anything else keeps ``typed``'s order of checks
    return (
        typed(delta, "content", str)
        or typed(delta, "reasoning_content", str)
        or typed(delta, "reasoning", str)
        or ""
    )


def interpret_openai(events: Sequence[Event], piece: Callable[[dict[str, Any]], str]) -> StreamResult:
    """Turn raw SSE events into chunks and tokens (rules in the module docstring).

    Known fields are checked as ``typed`` does (absent/null, or exactly of the
    type; ``bool`` is not an ``int``): a field of the wrong type raises
    ``PayloadError`` with ``typed``'s message, which ``ProtocolSpec.read_stream``
    records as ``bad_payload``. The checks are inlined and the result's fields
    kept in locals because this loop runs once per token of every stream (in
    the ``Finisher``, on the same CPU as the reads): a ``typed`` call and an
    attribute store per field were a tenth of the client's CPU.
    """
    res = StreamResult()
    parsed, res.done, res.error = parse_stream_json(events)
    error = res.error
    texts: list[str] = []
    add_text = texts.append
    times = res.chunk_times_ns
    add_time = times.append
    tokens = res.chunk_tokens
    add_tokens = tokens.append
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_source = "none"
    finished = False
    last_ct = 0
    all_usage = True
    inline_text = piece is text_piece
    for arrival_ns, obj in parsed:
        get = obj.get
        if get("error") is not None:
            error = f"error event in stream: {str(obj['error'])[:500]}"
            break
        choices = get("choices")
        if choices is not None and choices.__class__ is not list:
            raise wrong_type("choices", choices, list)
        usage = get("usage")
        ct: int | None = None
        if usage is not None:
            if usage.__class__ is not dict:
                raise wrong_type("usage", usage, dict)
            ct = usage.get("completion_tokens")
            if ct is not None and ct.__class__ is not int:
                raise wrong_type("completion_tokens", ct, int)
            pt = usage.get("prompt_tokens")
            if pt is not None:
                if pt.__class__ is not int:
                    raise wrong_type("prompt_tokens", pt, int)
                prompt_tokens = pt
        if not choices:
            if ct is not None:
                completion_tokens = ct
                usage_source = "usage"
                finished = True
            continue
        choice = choices[0]
        if choice.__class__ is not dict:
            raise PayloadError(f"choices[0] is {type(choice).__name__}, expected an object")
        if inline_text:  # text_piece, without a call per event
            text = choice.get("text")
            if text is None:
                text = ""
            elif text.__class__ is not str:
                raise wrong_type("text", text, str)
        else:
            text = piece(choice)
        if ct is None:
            if text:
                add_time(arrival_ns)
                add_tokens(1)
                all_usage = False
                add_text(text)
        else:
            delta = ct - last_ct
            if text or delta > 0:
                add_time(arrival_ns)
                add_tokens(delta if delta > 0 else 0)
                if text:
                    add_text(text)
            last_ct = ct
            if usage_source != "usage":
                completion_tokens = ct
                usage_source = "usage_per_chunk"
        reason = choice.get("finish_reason")
        if reason is not None:
            if reason.__class__ is not str:
                raise wrong_type("finish_reason", reason, str)
            if reason:
                finished = True
    res.error = error
    res.prompt_tokens = prompt_tokens
    res.completion_tokens = completion_tokens
    res.usage_source = usage_source
    res.finished = finished
    res.text = "".join(texts)
    res.per_chunk_usage = bool(tokens) and all_usage
    return res


def openai_body(plan: LoadPlan, prompt: PromptSpec, *, chat: bool) -> dict[str, Any]:
    """The request body for one prompt (``chat``: a messages list, else a prompt string)."""
    body: dict[str, Any] = {
        "model": plan.model,
        "max_tokens": prompt.output_tokens,
        "temperature": plan.temperature,
        "stream": True,
    }
    if plan.stream_usage:
        body["stream_options"] = dict(STREAM_OPTIONS)
    if chat:
        body["messages"] = prompt.messages or [{"role": "user", "content": prompt.text}]
    else:
        body["prompt"] = prompt.prompt if prompt.prompt is not None else prompt.text
    if plan.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = prompt.output_tokens
    return body


@dataclass(frozen=True)
class OpenAIProtocol(ProtocolSpec):
    """``completions`` or ``chat``: the same stream rules, a different body and text field."""

    chat: bool = False

    def build_request(self, plan: LoadPlan, prompt: PromptSpec) -> bytes:
        return orjson.dumps(openai_body(plan, prompt, chat=self.chat))

    def interpret(self, events: Sequence[Event]) -> StreamResult:
        return interpret_openai(events, chat_piece if self.chat else text_piece)

    def probe_stream_usage(
        self, base_url: str, model: str, client: Any, extensions: dict[str, Any] | None = None
    ) -> tuple[bool, str]:
        return probe_stream_usage(self, base_url, model, client, extensions)


def openai_spec(name: str, path: str, *, chat: bool) -> OpenAIProtocol:
    return OpenAIProtocol(
        name=name,
        transport="http",
        path=path,
        prompt_style="chat" if chat else "text",
        token_source="usage (final usage event; per-chunk usage deltas when cut)",
        readiness=READINESS,
        stream_usage=True,
        chat=chat,
    )


def probe_stream_usage(
    spec: ProtocolSpec, base_url: str, model: str, client: Any, extensions: dict[str, Any] | None = None
) -> tuple[bool, str]:
    """Whether the server takes ``stream_options``: one 1-token streamed request that carries it.

    HTTP 400 whose body names ``stream_options`` (vLLM 0.4.x forbids unknown
    fields) means no; a 2xx means yes. Anything else is not evidence either
    way: the default (send it) stands, and the reason says why.
    """
    body: dict[str, Any] = {"model": model, "max_tokens": 1, "stream": True, "stream_options": STREAM_OPTIONS}
    if spec.prompt_style == "chat":
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    url = f"{base_url}{spec.path}"
    try:
        with client.stream(
            "POST", url, json=body, headers={"X-Request-Id": "tokenbench-stream-usage-probe"}
        ) as r:
            text = r.read().decode("utf-8", "replace") if r.status_code >= 400 else ""
            status = r.status_code
    except Exception as err:  # httpx errors; the probe is advisory
        return True, f"probe failed ({type(err).__name__}); sending stream_options"
    if status == 400 and "stream_options" in text:
        return False, "server rejected stream_options (HTTP 400): usage comes from the tokenizer or chunks"
    if 200 <= status < 300:
        return True, "server accepted stream_options"
    return True, f"probe answered HTTP {status}; sending stream_options"
