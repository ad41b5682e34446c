"""The Finisher's fast paths give exactly the general paths' answers, on common and odd bodies.

Each fast path (the vectorised split, the one-pass JSON array, the inlined
type checks of the OpenAI interpreter) is pinned to its reference: the
per-event split (``split_lf``, ``_split_by_read``), the general decode
(``parse_events``) and the interpreter as it was written with ``typed``
(``reference_interpret`` below), over bodies cut into reads at random.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from itertools import accumulate
from typing import Any

import pytest

from harness.fidelity.truthsse import Shape
from harness.load.sseframe import (
    SseEvents,
    SseSplitter,
    _materialize,
    _split_by_read,
    split_lf,
    split_lf_vectorised,
    split_simple,
)
from harness.protocols.base import PayloadError, StreamResult, typed
from harness.protocols.jsonstream import (
    decode_simple_body,
    parse_events,
    parse_simple_stream,
    parse_stream_json,
)
from harness.protocols.openai import chat_piece, interpret_openai, text_piece
from harness.protocols.registry import get_protocol
from recorded_streams import load_http, names


def _ev(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunk(i: int, ct: bool = True, finish: Any = None, text: Any = None) -> bytes:
    obj: dict[str, Any] = {"id": "x", "choices": [{"index": 0, "text": f" t{i}" if text is None else text}]}
    obj["choices"][0]["finish_reason"] = finish
    if ct:
        obj["usage"] = {"prompt_tokens": 5, "completion_tokens": i + 1, "total_tokens": 6 + i}
    return _ev(obj)


def _chat(i: int, content: Any = "") -> bytes:
    return _ev({"choices": [{"index": 0, "delta": {"content": content or f" c{i}"}, "finish_reason": None}]})


USAGE_FINAL = _ev({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 12}})
DONE = b"data: [DONE]\n\n"


def truth_body(tokens: int = 24) -> bytes:
    """The fidelity truth server's bytes (usage + continuous usage), HTTP chunk framing removed."""
    shape = Shape(b'"m"', 1, 7, tokens, usage=True, continuous=True)
    out = []
    for pieces in shape.parts:
        size, _, rest = (b"cmpl-" + b"0" * 32).join(pieces).partition(b"\r\n")
        out.append(rest[: int(size, 16)])
    return b"".join(out)


def _many(n: int = 12, **kw: Any) -> bytes:
    return b"".join(_chunk(i, **kw) for i in range(n))


BODIES: dict[str, bytes] = {
    "truth": truth_body(),
    "truth_no_done": truth_body().removesuffix(DONE),
    "no_usage": _many(ct=False) + _chunk(12, ct=False, finish="stop") + DONE,
    "comments": b": keep-alive\n\n" + _many(6) + b": ping\n\n" + _many(6) + USAGE_FINAL + DONE,
    "blank_events": _many(5) + b"\n\n" + b" \t\n\n" + _many(5) + b"\n\n\n\n" + USAGE_FINAL + DONE,
    "leading_blank": b"\n\n" + _many(10) + DONE,
    "done_in_middle": _many(6) + DONE + _many(6) + DONE + DONE,
    "no_space_data": b"".join(b"data:" + _chunk(i)[6:] for i in range(12)) + b"data:[DONE]\n\n",
    "multiline_data": _many(6) + b'data: {"choices":\ndata: []}\n\n' + _many(6) + DONE,
    "event_field": b"".join(b"event: chunk\n" + _chunk(i) for i in range(10)) + DONE,
    "malformed": _many(6) + b'data: {"broken\n\n' + _many(6) + DONE,
    "two_objects": _many(6) + b"data: {},{}\n\n" + _many(6) + DONE,
    "not_object": _many(6) + b"data: [1, 2]\n\n" + _many(6) + DONE,
    "trailing_blank": _many(6) + _chunk(6).replace(b"}\n\n", b"}  \n\n") + _many(6) + DONE,
    "last_trailing_blank": _many(12) + _chunk(12).replace(b"}\n\n", b"} \n\n") + DONE,
    "error_event": _many(6) + _ev({"error": {"message": "boom"}}) + _many(3) + DONE,
    "wrong_text": _many(6) + _chunk(6, text=123) + _many(3) + DONE,
    "wrong_usage": _many(6) + _ev({"choices": [], "usage": []}) + DONE,
    "wrong_finish": _many(6) + _chunk(6, finish=1) + DONE,
    "bool_tokens": _many(6) + _ev({"choices": [{"text": "a"}], "usage": {"completion_tokens": True}}) + DONE,
    "choice_not_object": _many(6) + _ev({"choices": ["a"]}) + DONE,
    "cut": _many(12) + b'data: {"choices":[{"te',
    "cut_after_line": _many(12) + b'data: {"choices":[]}\n',
    "chat": b"".join(_chat(i) for i in range(12)) + DONE,
    "chat_wrong_content": b"".join(_chat(i) for i in range(8)) + _chat(8, content=5) + DONE,
    "chat_no_delta": b"".join(_chat(i) for i in range(8)) + _ev({"choices": [{"index": 0}]}) + DONE,
}
# The LF bodies in SimpleBody's shape (split_simple takes them; any other LF body goes to split_lf_vectorised),
# and those of them whose one decode stands (the others have a bad payload: the general decode names it).
DECODED_AT_ONCE = {"truth", "truth_no_done", "no_usage", "cut", "chat", "chat_wrong_content", "chat_no_delta"}
DECODED_AT_ONCE |= {
    "error_event",
    "wrong_text",
    "wrong_usage",
    "wrong_finish",
    "bool_tokens",
    "choice_not_object",
}
SIMPLE_SHAPED = DECODED_AT_ONCE | {"two_objects"}
BODIES["crlf"] = BODIES["comments"].replace(b"\n", b"\r\n")
BODIES["crlf_truth"] = BODIES["truth"].replace(b"\n", b"\r\n")


def reads_of(body: bytes, rng: random.Random, mode: str) -> tuple[list[int], list[int], list[bytes]]:
    """Cut ``body`` into reads: at event boundaries (one or several events per read) or anywhere."""
    if mode == "events":
        bounds = [i + 2 for i in range(len(body) - 1) if body[i : i + 2] == b"\n\n"]
        cuts = sorted({b for b in bounds if rng.random() < 0.7 and b < len(body)})
    elif mode == "bytes":
        cuts = list(range(1, len(body)))
    else:
        cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(1, 40))))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    ends, total = [], 0
    for p in pieces:
        total += len(p)
        ends.append(total)
    return ends, [1000 * (i + 1) for i in range(len(pieces))], pieces


CASES = [(name, mode, seed) for name in BODIES for mode in ("events", "random", "bytes") for seed in (0, 1)]


@pytest.mark.parametrize(("name", "mode", "seed"), CASES)
def test_splitter_matches_the_per_event_split(name: str, mode: str, seed: int) -> None:
    body = BODIES[name]
    ends, stamps, pieces = reads_of(body, random.Random(seed), mode)
    sp = SseSplitter()
    for data, stamp in zip(pieces, stamps, strict=True):
        sp.feed(bytearray(data), stamp)
    want = _split_by_read(bytearray(body), ends, stamps) if b"\r" in body else split_lf(body, ends, stamps)
    if b"\r" not in body:
        assert split_lf_vectorised(body, ends, stamps, min_events=0) == want
        assert split_lf(body, ends, stamps) == _split_by_read(bytearray(body), ends, stamps)
        found = split_simple(body, ends, stamps, min_events=0)
        assert (found is not None) == (name in SIMPLE_SHAPED)
        if found is not None:
            simple, coalesced, rest, event_stamps, closes = found
            assert (_materialize(body, event_stamps, closes), coalesced, rest) == want
            decoded = decode_simple_body(simple)
            assert (decoded is not None) == (name in DECODED_AT_ONCE)
            assert decoded is None or decoded == parse_events(want[0])
    assert list(sp.events) == want[0]
    assert sp.coalesced == want[1]
    assert sp.close() == want[2].strip()


def test_the_coalesced_count_is_data_events_per_read_minus_one() -> None:
    body = _chunk(0) + _chunk(1) + DONE + b": c\n\n" + _chunk(2) + _chunk(3) + _chunk(4) + _many(4)
    cut1, cut2 = len(_chunk(0) + _chunk(1) + DONE), len(body) - len(_many(4))
    ends, stamps = [cut1, cut2, len(body)], [1, 2, 3]
    events, coalesced, rest = split_lf_vectorised(body, ends, stamps, min_events=0)
    assert [t for t, _ in events] == [1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert coalesced == 1 + 2 + 3 and rest == b""


def _events(name: str) -> SseEvents:
    """The body's events as ``HttpWire.unpack`` hands them to an interpreter."""
    body = BODIES[name]
    ends, stamps, pieces = reads_of(body, random.Random(3), "events")
    sp = SseSplitter()
    for data, stamp in zip(pieces, stamps, strict=True):
        sp.feed(data, stamp)
    return sp.stream()


@pytest.mark.parametrize("name", list(BODIES))
def test_parse_stream_json_matches_the_general_decode(name: str) -> None:
    events = _events(name)
    want = parse_events(list(events))
    assert parse_stream_json(events) == want
    assert parse_stream_json(list(events)) == want
    assert parse_stream_json(_events(name)) == want  # before anything made the events list


def test_the_events_sequence_is_the_splitters_events_list() -> None:
    events = _events("truth")
    assert events.simple is not None
    assert events == list(events) and len(events) == 24 + 2 and events[-1][1] == b"data: [DONE]"
    assert [t for t, _ in events] == [t for t, _ in _events("truth")]


@pytest.mark.parametrize("name", ["truth", "truth_no_done", "no_usage", "chat", "crlf_truth"])
def test_common_bodies_take_the_one_pass_decode(name: str) -> None:
    events = _events(name)
    assert parse_simple_stream(list(events)) is not None


def reference_interpret(
    events: list[tuple[int, bytes]], piece: Callable[[dict[str, Any]], str]
) -> StreamResult:
    """``interpret_openai`` as written before its checks were inlined (``typed`` per field)."""
    res = StreamResult()
    parsed, res.done, res.error = parse_events(events)
    texts: list[str] = []
    last_ct, all_usage = 0, True
    for arrival_ns, obj in parsed:
        if obj.get("error") is not None:
            res.error = f"error event in stream: {str(obj['error'])[:500]}"
            break
        choices = typed(obj, "choices", list)
        usage = typed(obj, "usage", dict)
        ct: int | None = None
        if usage is not None:
            ct = typed(usage, "completion_tokens", int)
            pt = typed(usage, "prompt_tokens", int)
            if pt is not None:
                res.prompt_tokens = pt
        if not choices:
            if ct is not None:
                res.completion_tokens, res.usage_source, res.finished = ct, "usage", True
            continue
        choice = choices[0]
        if choice.__class__ is not dict:
            raise PayloadError(f"choices[0] is {type(choice).__name__}, expected an object")
        text = piece(choice)
        if ct is None:
            if text:
                res.chunk_times_ns.append(arrival_ns)
                res.chunk_tokens.append(1)
                all_usage = False
                texts.append(text)
        else:
            delta = ct - last_ct
            if text or delta > 0:
                res.chunk_times_ns.append(arrival_ns)
                res.chunk_tokens.append(delta if delta > 0 else 0)
                if text:
                    texts.append(text)
            last_ct = ct
            if res.usage_source != "usage":
                res.completion_tokens, res.usage_source = ct, "usage_per_chunk"
        if typed(choice, "finish_reason", str):
            res.finished = True
    res.text = "".join(texts)
    res.per_chunk_usage = bool(res.chunk_tokens) and all_usage
    return res


def reference_text_piece(choice: dict[str, Any]) -> str:
    return typed(choice, "text", str) or ""


def reference_chat_piece(choice: dict[str, Any]) -> str:
    delta = typed(choice, "delta", dict) or {}
    return (
        typed(delta, "content", str)
        or typed(delta, "reasoning_content", str)
        or typed(delta, "reasoning", str)
        or ""
    )


def _outcome(fn: Callable[[], StreamResult]) -> dict[str, Any] | str:
    try:
        return dataclasses.asdict(fn())
    except Exception as err:  # noqa: BLE001 - the message is what is compared
        return f"{type(err).__name__}: {err}"


@pytest.mark.parametrize("name", list(BODIES))
@pytest.mark.parametrize("chat", [False, True])
def test_interpret_openai_matches_the_typed_reference(name: str, chat: bool) -> None:
    events = _events(name)
    piece, ref_piece = (chat_piece, reference_chat_piece) if chat else (text_piece, reference_text_piece)
    got = _outcome(lambda: interpret_openai(events, piece))
    assert got == _outcome(lambda: reference_interpret(list(events), ref_piece))
    spec = get_protocol("chat" if chat else "completions")
    assert dataclasses.asdict(spec.read_stream(events)) == dataclasses.asdict(spec.read_stream(list(events)))


def test_the_reference_comparison_can_fail() -> None:
    """The bodies exercise what the fast paths must get right: errors, wrong types, cut streams."""
    outcomes = {name: _outcome(lambda n=name: interpret_openai(_events(n), text_piece)) for name in BODIES}
    assert outcomes["wrong_text"] == "PayloadError: field 'text' is int, expected str: 123"
    assert outcomes["wrong_usage"] == "PayloadError: field 'usage' is list, expected dict: []"
    assert outcomes["bool_tokens"] == "PayloadError: field 'completion_tokens' is bool, expected int: True"
    assert isinstance(outcomes["error_event"], dict) and "boom" in outcomes["error_event"]["error"]
    assert isinstance(outcomes["malformed"], dict) and "malformed JSON" in outcomes["malformed"]["error"]
    truth = outcomes["truth"]
    assert isinstance(truth, dict) and truth["completion_tokens"] == 24 and truth["done"]
    assert sum(truth["chunk_tokens"]) == 24 and truth["usage_source"] == "usage"
    cut = outcomes["cut"]
    assert isinstance(cut, dict) and not cut["done"] and not cut["finished"]


def _recorded_protocol(name: str) -> str:
    return "caikit-http" if name.startswith("caikit-http") else "chat" if "-chat" in name else "completions"


@pytest.mark.parametrize("name", [n for n in names("http") if load_http(n).status == 200])
def test_recorded_server_streams_read_the_same_on_every_path(name: str) -> None:
    """Real servers' bytes, as they were read: the fast paths agree with the general ones."""
    rec = load_http(name)
    stamps = [1000 * (i + 1) for i in range(len(rec.chunks))]
    sp = SseSplitter()
    for data, stamp in zip(rec.chunks, stamps, strict=True):
        sp.feed(data, stamp)
    ends = list(accumulate(map(len, rec.chunks)))
    body = rec.body
    want = _split_by_read(bytearray(body), ends, stamps) if b"\r" in body else split_lf(body, ends, stamps)
    assert (list(sp.events), sp.coalesced) == want[:2]
    spec = get_protocol(_recorded_protocol(name))
    got = dataclasses.asdict(spec.read_stream(sp.stream()))
    assert got == dataclasses.asdict(spec.read_stream(want[0]))
    assert (got["error"] is None) == (
        "-error-" not in name
    )  # the one error recording is Caikit's error event
    assert bool(got["chunk_times_ns"]) == ("-error-" not in name)
    if spec.name != "caikit-http":
        piece = reference_chat_piece if spec.name == "chat" else reference_text_piece
        assert got == dataclasses.asdict(reference_interpret(want[0], piece))
        # vLLM's bytes are in SimpleBody's shape: the one-pass path is what reads them
        assert split_simple(body, ends, stamps, min_events=0) is not None
