"""Decoding the JSON payloads of a finished SSE stream in one go (shared by every SSE protocol).

Why a module of its own: OpenAI, TGI and Caikit HTTP all stream one JSON
object per SSE event, and decoding them is the costly part of interpreting a
stream. It runs once per request, after the response is over (in the
``Finisher``), never between a read and its stamp.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from harness.load.sseframe import DONE, DONE_EVENT, SimpleBody, SseEvents, event_data


def parse_simple_stream(events: list[tuple[int, bytes]]) -> tuple[list[tuple[int, Any]], bool, None] | None:
    """``parse_stream_json``'s answer for the common body shape, or None (then take the general path).

    The shape: every event is one ``data: {...}`` line ending in ``}`` except
    a final ``data: [DONE]``. Then the array ``[p1,p2,...]`` of the payloads
    (what ``parse_stream_json`` decodes) is built without a slice per event:
    join the events with ``\n\n``, drop the first ``data: `` and replace each
    ``}\n\ndata: {`` by ``},{`` (one pass; the length says how many were replaced).

    Why that is exact: if exactly ``n - 1`` were replaced and no LF is left,
    the joined bytes held only the ``2 * (n - 1)`` LFs of the separators (each
    replacement removes two), so no event contains a raw LF (JSON never needs
    one: a string carries a newline as ``\\n``), each replacement sat on one
    separator, and every separator was replaced. So every event but the first
    starts ``data: {`` and every one but the last ends ``}``; the first and
    last are checked directly. That is the general path's selection (one
    ``data: {`` line) and its "every payload starts with { and ends with }"
    test (payloads with trailing blanks take the general path), and the
    result is ``b",".join(raw[6:] for raw in raws)`` byte for byte: the same
    array. The element count is verified as there, and a decode error defers
    to the general path, which names the bad event.
    """
    n = len(events)
    done = n > 0 and events[-1][1] == DONE_EVENT
    if done:
        n -= 1
    if n < 2:
        return None
    stamps, raws = zip(*events[:n], strict=True)
    body = b"\n\n".join(raws)
    if not body.startswith(b"data: {") or not body.endswith(b"}"):
        return None
    joined = body[6:].replace(b"}\n\ndata: {", b"},{")
    if len(joined) != len(body) - 6 - (n - 1) * (len(b"}\n\ndata: {") - len(b"},{")) or b"\n" in joined:
        return None
    try:
        objs = orjson.loads(b"[" + joined + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(objs) != n:
        return None
    return list(zip(stamps, objs, strict=True)), done, None


def parse_stream_json(events: Sequence[tuple[int, bytes]]) -> tuple[list[tuple[int, Any]], bool, str | None]:
    """Decode every data event's JSON: ``([(arrival_ns, obj)...], saw_done, error)``.

    Why one ``orjson.loads`` for the whole stream: it runs once per request on
    the same event loop as every other stream's reads, and a single call over
    ``[e1,e2,...]`` costs a fraction of 128 separate calls. The join is only
    trusted when every payload looks like one object and the element count
    matches; otherwise (a malformed event) events are decoded one by one so the
    error names the event. Objects before the first bad event are kept.
    The common body shape takes less work per event: from an ``SseEvents``
    (what ``HttpWire.unpack`` hands over) its ``SimpleBody`` array is decoded
    as it is, from a plain list ``parse_simple_stream`` builds that array; both
    defer to ``parse_events`` (the general path) when anything is off.
    """
    if events.__class__ is SseEvents:
        body = events.simple  # type: ignore[attr-defined]  # (SseEvents, checked above)
        if body is not None:
            decoded = decode_simple_body(body)
            if decoded is not None:
                return decoded
        events = list(events)
    simple = parse_simple_stream(events)
    if simple is not None:
        return simple
    return parse_events(events)


def decode_simple_body(body: SimpleBody) -> tuple[list[tuple[int, Any]], bool, None] | None:
    """``parse_stream_json`` of a ``SimpleBody``: its array decoded once, or None (a bad payload: general path)."""
    try:
        objs = orjson.loads(body.array)
    except orjson.JSONDecodeError:
        return None
    if len(objs) != len(body.stamps):
        return None
    return list(zip(body.stamps, objs, strict=True)), body.done, None


def parse_events(events: list[tuple[int, bytes]]) -> tuple[list[tuple[int, Any]], bool, str | None]:
    """``parse_stream_json`` for any body: the general path (and the reference the fast paths are tested on)."""
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
