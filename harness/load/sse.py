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
from collections.abc import Callable
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


class SseSplitter:
    """SSE framing with per-read arrival stamps, split lazily once the stream is over.

    ``events`` holds ``(arrival_ns, raw_event_bytes)``, where the stamp is
    that of the read which completed the event. ``coalesced`` counts data
    events that arrived in the same read as an earlier data event.

    Why lazy: ``feed`` runs once per socket read on the hot path, where every
    microsecond delays the stamps of *other* streams' reads. So ``feed`` only
    appends the bytes and remembers (end offset, stamp); the blank-line search
    happens on the first access to ``events``/``coalesced``/``close``, after
    the response, with the same result as splitting read by read: an event
    gets the stamp of the first read whose bytes include its closing blank line.
    """

    __slots__ = ("_buf", "_ends", "_stamps", "_split_len", "_events", "_coalesced", "_rest")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ends: list[int] = []
        self._stamps: list[int] = []
        self._split_len = -1  # len(_buf) when _events was last computed
        self._events: list[tuple[int, bytes]] = []
        self._coalesced = 0
        self._rest = b""

    def feed(self, data: bytes | bytearray, arrival_ns: int) -> None:
        buf = self._buf
        buf += data
        self._ends.append(len(buf))
        self._stamps.append(arrival_ns)

    @property
    def reads(self) -> int:
        return len(self._stamps)

    @property
    def events(self) -> list[tuple[int, bytes]]:
        self._split()
        return self._events

    @property
    def coalesced(self) -> int:
        self._split()
        return self._coalesced

    def close(self) -> bytes:
        """End of stream: returns any bytes of an unterminated event (non-empty means cut mid-event)."""
        self._split()
        rest, self._rest = self._rest.strip(), b""
        return rest

    def _split(self) -> None:
        if self._split_len == len(self._buf):
            return
        self._split_len = len(self._buf)
        if b"\r" in self._buf:
            self._events, self._coalesced, self._rest = _split_by_read(self._buf, self._ends, self._stamps)
        else:
            self._events, self._coalesced, self._rest = _split_lf(self._buf, self._ends, self._stamps)


def _split_lf(
    buf: bytearray, ends: list[int], stamps: list[int]
) -> tuple[list[tuple[int, bytes]], int, bytes]:
    """One pass over the whole body (LF line ends): events, coalesced count, unterminated rest."""
    events: list[tuple[int, bytes]] = []
    coalesced = 0
    read_data = 0  # data events completed by read r
    r = 0
    pos = 0
    find = buf.find
    while (idx := find(b"\n\n", pos)) >= 0:
        close = idx + 2
        while ends[r] < close:  # the event was completed by a later read
            if read_data > 1:
                coalesced += read_data - 1
            read_data = 0
            r += 1
        raw = bytes(buf[pos:idx])
        pos = close
        if not raw.strip():
            continue
        events.append((stamps[r], raw))
        if _is_data_event(raw):
            read_data += 1
    if read_data > 1:
        coalesced += read_data - 1
    return events, coalesced, bytes(buf[pos:])


def _split_by_read(
    body: bytearray, ends: list[int], stamps: list[int]
) -> tuple[list[tuple[int, bytes]], int, bytes]:
    """CRLF line ends (allowed by SSE, rare): replay read by read, normalising as the bytes come."""
    events: list[tuple[int, bytes]] = []
    coalesced = 0
    buf = bytearray()
    start = 0
    for end, stamp in zip(ends, stamps, strict=True):
        buf += body[start:end]
        start = end
        if b"\r" in buf:
            buf = bytearray(buf.replace(b"\r\n", b"\n"))
        data_events = 0
        while (idx := buf.find(b"\n\n")) >= 0:
            raw = bytes(buf[:idx])
            del buf[: idx + 2]
            if not raw.strip():
                continue
            events.append((stamp, raw))
            if _is_data_event(raw):
                data_events += 1
        if data_events > 1:
            coalesced += data_events - 1
    return events, coalesced, bytes(buf)


def _is_data_event(raw: bytes) -> bool:
    """A data event other than ``[DONE]``: the ones whose stamps are timing data."""
    if raw.startswith(b"data:"):
        if raw.startswith(b"data: {"):
            return True  # the common case, decided without splitting lines
    elif b"\ndata:" not in raw:
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


def _read_stream(
    resp: Any,
    sock: Any,
    feed_parser: Callable[[bytes], None],
    feed_splitter: Callable[[bytearray, int], None],
    buf: bytearray,
    clock: Callable[[], int],
) -> int:
    """Read body bytes until the response is complete; returns the body size. Raises on socket errors.

    Two costs per token are avoided here, measured with py-spy at 256 streams:

    * the per-read ``gevent.Timeout`` that a gevent socket with a timeout
      arms and cancels around every wait (the request as a whole is already
      under one ``gevent.Timeout``), by clearing the socket's own timeout for
      the duration of the stream;
    * the failing ``recv`` (a syscall plus an ``EWOULDBLOCK`` exception) that
      precedes every wait: after a short read the socket is drained, so we wait
      for readability *first* and then ``recv`` once on the raw socket.

    Falls back to the socket's public ``recv`` on a gevent without these internals.
    """
    size = 0
    raw = getattr(sock, "_sock", None)
    wait = getattr(sock, "_wait", None)
    event = getattr(sock, "_read_event", None)
    old_timeout = sock.gettimeout()
    sock.settimeout(None)
    try:
        if raw is None or wait is None or event is None:  # pragma: no cover - other gevent
            while not resp.message_complete:
                data = sock.recv(READ_SIZE)
                now = clock()
                if not data:
                    break
                feed_parser(data)
                if buf:
                    size += len(buf)
                    feed_splitter(buf, now)
                    buf.clear()
            return size
        recv = raw.recv
        drained = True
        while not resp.message_complete:
            if drained:
                wait(event)
            try:
                data = recv(READ_SIZE)
            except BlockingIOError:
                drained = True  # woke without data (spurious readiness): wait again
                continue
            now = clock()
            if not data:
                break
            drained = len(data) < READ_SIZE
            feed_parser(data)
            if buf:
                size += len(buf)
                feed_splitter(buf, now)
                buf.clear()
        return size
    finally:
        try:
            sock.settimeout(old_timeout)
        except OSError:  # closed under us: nothing to restore
            pass


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
            # The hot loop: per read only wait, recv, stamp, undo the chunked framing
            # (C parser) and hand the body bytes over. Locals avoid attribute lookups.
            buf: bytearray = resp._body_buffer
            feed_splitter = splitter.feed
            feed_parser = resp.feed
            clock = time.monotonic_ns
            size = 0
            if buf:
                size += len(buf)
                feed_splitter(buf, head_ns)
                buf.clear()
            sock = resp._sock
            if sock is not None and not resp.message_complete:
                size += _read_stream(resp, sock, feed_parser, feed_splitter, buf, clock)
            return Outcome(status, sent_ns, clock(), splitter, body_bytes=size)
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
