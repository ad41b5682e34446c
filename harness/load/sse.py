"""Streaming OpenAI responses: read with per-read stamps, split on arrival, interpret afterwards.

Why two phases: the arrival time of a token is the moment the socket read
returned, and anything done between that read and the timestamp (JSON
decoding, tokenizing) shows up as fake inter-token latency and, under load,
as event-loop lag that delays *other* streams' reads. So the hot path
(``stream_post`` + ``SseSplitter.feed``) only stamps, appends and splits bytes
on blank lines; all JSON work happens in ``interpret_openai`` once the
response is over.

Why a hand-rolled read loop on geventhttpclient: Locust's ``FastHttpSession``
(and geventhttpclient's own ``read``) buffer the body until a block is full,
so the moment a token arrived would be lost. ``stream_post`` stamps each
``recv`` with ``time.monotonic_ns()`` before anything else happens; the HTTP
chunked framing is undone by geventhttpclient's C parser.

A read that completes more than one data event is *coalesced*: every event in
it carries the same stamp, so its per-token gaps are not real. We count those
events so the report can say how much of the ITL data is in doubt.

This module imports gevent but not Locust (which monkey-patches on import),
so it is safe to use and test outside a Locust process.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
import orjson
from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError

if TYPE_CHECKING:
    from geventhttpclient import HTTPClient

    from harness.load.plan import LoadPlan
    from harness.load.prompts import PromptSpec

DONE = b"[DONE]"
READ_SIZE = 64 * 1024
ERROR_BODY_CHARS = 500


@dataclass(slots=True)
class SseSplitter:
    """Incremental SSE framing with per-read arrival stamps.

    ``events`` holds ``(arrival_ns, raw_event_bytes)``, where the stamp is
    that of the read which completed the event. ``coalesced`` counts data
    events that arrived in the same read as an earlier data event.
    """

    events: list[tuple[int, bytes]] = field(default_factory=list)
    coalesced: int = 0
    reads: int = 0
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes, arrival_ns: int) -> None:
        self.reads += 1
        buf = self._buf
        buf += data
        if b"\r" in buf:
            # SSE allows CRLF line ends; normalise so one separator search suffices.
            self._buf = buf = bytearray(buf.replace(b"\r\n", b"\n"))
        data_events = 0
        while True:
            idx = buf.find(b"\n\n")
            if idx < 0:
                break
            raw = bytes(buf[:idx])
            del buf[: idx + 2]
            if not raw.strip():
                continue
            self.events.append((arrival_ns, raw))
            if _is_data_event(raw):
                data_events += 1
        if data_events > 1:
            self.coalesced += data_events - 1

    def close(self) -> bytes:
        """End of stream: returns any bytes of an unterminated event (non-empty means cut mid-event)."""
        rest = bytes(self._buf).strip()
        self._buf.clear()
        return rest


def _is_data_event(raw: bytes) -> bool:
    """A data event other than ``[DONE]``: the ones whose stamps are timing data."""
    if not raw.startswith(b"data:") and b"\ndata:" not in raw:
        return False
    return event_data(raw) != DONE


def event_data(raw: bytes) -> bytes | None:
    """The ``data`` field of one SSE event (multi-line data joined by ``\\n``), or None."""
    parts: list[bytes] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


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


def interpret_openai(events: list[tuple[int, bytes]], api: str) -> StreamResult:
    """Turn raw SSE events of ``/v1/completions`` or ``/v1/chat/completions`` into chunks and tokens.

    A *content chunk* is an event that carries text or advances
    ``usage.completion_tokens``. Its token count is the usage delta when the
    server sends continuous usage (vLLM does), else 1. Role-only and
    usage-only events carry no tokens and are not chunks.
    """
    res = StreamResult()
    texts: list[str] = []
    last_ct = 0
    all_usage = True
    for arrival_ns, raw in events:
        data = event_data(raw)
        if data is None:
            continue  # comments / keep-alives / other fields
        if data.strip() == DONE:
            res.done = True
            continue
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            res.error = f"malformed JSON in stream event: {err}: {data[:200]!r}"
            break
        if not isinstance(obj, dict):
            res.error = f"stream event is not a JSON object: {data[:200]!r}"
            break
        if obj.get("error") is not None:
            res.error = f"error event in stream: {str(obj['error'])[:500]}"
            break
        choices = obj.get("choices") or []
        usage = obj.get("usage")
        ct: int | None = None
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                ct = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                res.prompt_tokens = usage["prompt_tokens"]
        if not choices:
            if ct is not None:
                res.completion_tokens = ct
                res.usage_source = "usage"
                res.finished = True
            continue
        choice = choices[0] if isinstance(choices[0], dict) else {}
        piece = _piece(choice, api)
        delta = None if ct is None else ct - last_ct
        if piece or (delta is not None and delta > 0):
            res.chunk_times_ns.append(arrival_ns)
            if delta is None:
                all_usage = False
                res.chunk_tokens.append(1)
            else:
                res.chunk_tokens.append(max(delta, 0))
            if piece:
                texts.append(piece)
        if ct is not None:
            last_ct = ct
            if res.usage_source != "usage":
                res.completion_tokens = ct
                res.usage_source = "usage_per_chunk"
        if choice.get("finish_reason"):
            res.finished = True
    res.text = "".join(texts)
    res.per_chunk_usage = bool(res.chunk_tokens) and all_usage
    return res


# --- reading a streamed HTTP response ------------------------------------------------------


class _Deadline(Exception):
    """The whole request ran past ``timeout_s``."""


@dataclass
class Outcome:
    """Raw result of one HTTP exchange, before interpretation."""

    status: int
    sent_ns: int
    end_ns: int
    splitter: SseSplitter
    error_class: str | None = None
    error_message: str | None = None
    body_bytes: int = 0


def _read_body(resp: Any, limit: int = 64 * 1024) -> bytes:
    try:
        return bytes(resp.read(limit))
    except Exception:  # the error body is a courtesy; the status already classifies the request
        return b""


def stream_post(
    client: HTTPClient, path: str, body: bytes, headers: dict[str, str], timeout_s: float
) -> Outcome:
    """POST and read an SSE response, stamping every socket read; never raises for network errors.

    Uses geventhttpclient's parser state (``_sock``/``_body_buffer``): the
    public ``read`` blocks until a full block arrives, which would erase the
    per-token timing we are here to measure.
    """
    splitter = SseSplitter()
    sent_ns = time.monotonic_ns()
    status = 0
    resp: Any = None
    try:
        with gevent.Timeout(timeout_s, _Deadline):
            try:
                resp = client.request("POST", path, body=body, headers=headers)
            except (ConnectionError, socket.gaierror, HTTPConnectionClosed, HTTPParseError) as err:
                return Outcome(0, sent_ns, time.monotonic_ns(), splitter, "connect", _msg(err))
            except OSError as err:
                if isinstance(err, TimeoutError):
                    raise
                return Outcome(0, sent_ns, time.monotonic_ns(), splitter, "connect", _msg(err))
            head_ns = time.monotonic_ns()
            status = resp.status_code
            if status >= 400:
                text = _read_body(resp).decode("utf-8", "replace")[:ERROR_BODY_CHARS]
                cls = "http_4xx" if status < 500 else "http_5xx"
                return Outcome(status, sent_ns, time.monotonic_ns(), splitter, cls, f"HTTP {status}: {text}")
            buf: bytearray = resp._body_buffer
            size = 0
            if buf:
                size += len(buf)
                splitter.feed(bytes(buf), head_ns)
                buf.clear()
            while not resp.message_complete:
                sock = resp._sock
                if sock is None:
                    break
                data = sock.recv(READ_SIZE)
                now = time.monotonic_ns()
                if not data:
                    break
                resp.feed(data)
                if buf:
                    size += len(buf)
                    splitter.feed(bytes(buf), now)
                    buf.clear()
            return Outcome(status, sent_ns, time.monotonic_ns(), splitter, body_bytes=size)
    except (_Deadline, TimeoutError) as err:
        msg = f"no complete response within {timeout_s:g} s" if isinstance(err, _Deadline) else _msg(err)
        return Outcome(status, sent_ns, time.monotonic_ns(), splitter, "timeout", msg)
    except HTTPParseError as err:
        return Outcome(
            status, sent_ns, time.monotonic_ns(), splitter, "bad_payload", f"HTTP framing: {_msg(err)}"
        )
    except OSError as err:
        return Outcome(status, sent_ns, time.monotonic_ns(), splitter, "stream_broken", _msg(err))
    finally:
        if resp is not None:
            resp.release()


def _msg(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:ERROR_BODY_CHARS]


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
