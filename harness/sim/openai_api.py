"""The OpenAI-compatible surface, byte-for-byte in vLLM's shape.

Why hand-built bytes instead of ``json.dumps`` per chunk: a chunk's JSON is the
same for the whole request except the text, finish reason and (optionally)
usage, so the constant parts are rendered once per request. That keeps the
per-token cost to a few byte concatenations, which is most of what lets one
core stream tens of thousands of tokens per second.

Chat streams open with a role-only chunk (``delta: {role, content: ""}``),
written together with the first token, as vLLM does; it carries no token.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from harness.sim.generation import TOKEN_TEXT, BadRequest, GenSpec, Plan, count_words, int_field


def parse_openai(path: str, body: dict[str, Any], model: str, default_max_tokens: int) -> GenSpec:
    """Read a completions or chat body; raises ``BadRequest`` naming the bad field."""
    chat = path.endswith("/chat/completions")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: expected a non-empty list")
        prompt = 0
        for i, msg in enumerate(messages):
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        prompt += len(part["text"].split())
            elif isinstance(content, str):
                prompt += len(content.split())
            elif content is not None:
                raise BadRequest(f"messages[{i}].content: expected a string or parts, got {content!r}")
    else:
        if "prompt" not in body:
            raise BadRequest("prompt: missing")
        prompt = count_words(body["prompt"], "prompt")
    max_key = (
        "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    )
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise BadRequest(f"stream_options: expected an object, got {opts!r}")
    return GenSpec(
        api="chat" if chat else "completions",
        model=str(body.get("model") or model),
        prompt_tokens=prompt,
        max_tokens=int_field(body, max_key, default_max_tokens, 1),
        min_tokens=int_field(body, "min_tokens", 0, 0),
        ignore_eos=bool(body.get("ignore_eos", False)),
        stream=bool(body.get("stream", False)),
        include_usage=bool(opts.get("include_usage", False)),
        continuous_usage=bool(opts.get("continuous_usage_stats", False)),
    )


def error_body(status: int, message: str) -> bytes:
    """vLLM's error JSON."""
    kind = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}.get(
        status, "InternalServerError"
    )
    return orjson.dumps({"object": "error", "message": message, "type": kind, "param": None, "code": status})


def _usage(prompt: int, completion: int) -> bytes:
    return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
        prompt,
        prompt + completion,
        completion,
    )


class OpenAIFormat:
    """Bytes for one completions or chat request."""

    content_type = b"text/event-stream; charset=utf-8"

    def __init__(self, spec: GenSpec, plan: Plan) -> None:
        self.spec = spec
        self.plan = plan
        self.chat = spec.api == "chat"
        self.oid = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        obj = b"chat.completion.chunk" if self.chat else b"text_completion"
        self._head = b'data: {"id":"%s","object":"%s","created":%d,"model":%s,"choices":[' % (
            self.oid.encode(),
            obj,
            self.created,
            orjson.dumps(spec.model),
        )
        self._finish = orjson.dumps(plan.finish_reason)

    def _usage_tail(self, completion: int) -> bytes:
        if self.spec.continuous_usage and self.spec.stream and self.spec.include_usage:
            return b',"usage":' + _usage(self.spec.prompt_tokens, completion)
        return b""

    def chunk(self, sent: int, count: int, first: bool, last: bool) -> bytes:
        fin = self._finish if last else b"null"
        text = (TOKEN_TEXT * count).encode()
        usage = self._usage_tail(sent + count)
        if self.chat:
            out = b""
            if first:
                out = (
                    self._head
                    + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
                    + self._usage_tail(0)
                    + b"}\n\n"
                )
            return out + (
                self._head
                + b'{"index":0,"delta":{"content":"'
                + text
                + b'"},"logprobs":null,"finish_reason":'
                + fin
                + b"}]"
                + usage
                + b"}\n\n"
            )
        return (
            self._head
            + b'{"index":0,"text":"'
            + text
            + b'","logprobs":null,"finish_reason":'
            + fin
            + b',"stop_reason":null}]'
            + usage
            + b"}\n\n"
        )

    def tail(self) -> bytes:
        out = b""
        if self.spec.include_usage:
            out = self._head + b'],"usage":' + _usage(self.spec.prompt_tokens, self.plan.n_tokens) + b"}\n\n"
        return out + b"data: [DONE]\n\n"

    def malformed(self) -> bytes:
        return b'data: {"id":"' + self.oid.encode() + b'","choices":[{"text": <<not json\n\n'

    def body(self) -> bytes:
        text = TOKEN_TEXT * self.plan.n_tokens
        usage = {
            "prompt_tokens": self.spec.prompt_tokens,
            "total_tokens": self.spec.prompt_tokens + self.plan.n_tokens,
            "completion_tokens": self.plan.n_tokens,
        }
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": self.plan.finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": self.plan.finish_reason,
                "stop_reason": None,
            }
            obj = "text_completion"
        return orjson.dumps(
            {
                "id": self.oid,
                "object": obj,
                "created": self.created,
                "model": self.spec.model,
                "choices": [choice],
                "usage": usage,
            }
        )


def models_body(model: str, max_model_len: int) -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "id": model,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "tokenbench-sim",
                    "root": model,
                    "parent": None,
                    "max_model_len": max_model_len,
                }
            ],
        }
    )
