"""What one simulated request will produce, independent of its wire protocol.

Why split from the protocols: OpenAI completions, chat and TGI all reduce to
"prompt of P tokens, produce N tokens, stream or not"; the timing driver in
``server.py`` only needs that plus a ``StreamFormat`` that renders bytes.

Prompt tokens are counted as whitespace-separated words of the prompt (or of
all message contents). The harness builds prompts from single-token words, so
this equals the real tokenizer's count; a list of token ids counts its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

TOKEN_TEXT = " tok"
TOKEN_ID = 1000


class BadRequest(ValueError):
    """A request body the sim rejects with HTTP 400; the message names the field."""


class Rejected(BadRequest):
    """A rejection whose response the API renders itself (Caikit streams errors as SSE, HTTP 200)."""

    def __init__(self, message: str, status: int, body: bytes, content_type: bytes = b"application/json"):
        super().__init__(message)
        self.status = status
        self.body = body
        self.content_type = content_type


@dataclass(slots=True)
class GenSpec:
    """The request's ask, parsed from its body."""

    api: str  # "completions" | "chat" | "tgi" | "tgis" | "caikit-http" | "caikit-grpc"
    model: str
    prompt_tokens: int
    max_tokens: int
    min_tokens: int = 0
    ignore_eos: bool = False
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False


@dataclass(slots=True)
class Plan:
    """The sim's answer: how many tokens, and why it stopped."""

    n_tokens: int
    finish_reason: str  # "length" | "stop"


class StreamFormat(Protocol):
    """Renders one request's bytes. ``chunk`` gets tokens already sent and this chunk's count."""

    content_type: bytes

    def chunk(self, sent: int, count: int, first: bool, last: bool) -> bytes: ...

    def tail(self) -> bytes: ...

    def malformed(self) -> bytes: ...

    def body(self) -> bytes: ...


def count_words(value: Any, field_name: str) -> int:
    """Prompt tokens of a prompt value: words of a string, length of a token-id list."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        if len(value) == 1:
            return count_words(value[0], field_name)
        raise BadRequest(f"{field_name}: the sim serves one prompt per request, got a batch of {len(value)}")
    raise BadRequest(f"{field_name}: expected a string or a list of token ids, got {type(value).__name__}")


def int_field(body: dict[str, Any], name: str, default: int, minimum: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadRequest(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value
