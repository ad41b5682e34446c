"""Decoding the JSON payloads of a finished SSE stream in one go (shared by every SSE protocol).

Why a module of its own: OpenAI, TGI and Caikit HTTP all stream one JSON
object per SSE event, and decoding them is the costly part of interpreting a
stream. It runs once per request, after the response is over (in the
``Finisher``), never between a read and its stamp.
"""

from __future__ import annotations

from typing import Any

import orjson

from harness.load.sseframe import DONE, event_data


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
