"""SSE framing with arrival stamps, and interpretation of OpenAI streams."""

from __future__ import annotations

import json

from harness.load.sseframe import SseSplitter, event_data
from harness.protocols.registry import get_protocol


def _ev(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _completion(text: str, ct: int | None = None, finish: str | None = None) -> bytes:
    obj: dict = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    if ct is not None:
        obj["usage"] = {"prompt_tokens": 5, "completion_tokens": ct, "total_tokens": 5 + ct}
    return _ev(obj)


USAGE_FINAL = _ev({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"


def _feed_all(reads: list[bytes]) -> SseSplitter:
    sp = SseSplitter()
    for i, chunk in enumerate(reads):
        sp.feed(chunk, 1000 * (i + 1))
    return sp


def test_event_split_mid_line_gets_the_stamp_of_the_completing_read() -> None:
    stream = _completion(" a", 1) + _completion(" b", 2)
    cut = len(_completion(" a", 1)) - 5  # inside the first event
    sp = _feed_all([stream[:cut], stream[cut:]])
    assert [t for t, _ in sp.events] == [2000, 2000]
    assert sp.coalesced == 1  # two data events completed by one read
    assert sp.reads == 2


def test_split_between_the_two_newlines_of_a_separator() -> None:
    e1 = _completion(" a", 1)
    sp = _feed_all([e1[:-1], e1[-1:], _completion(" b", 2)])
    assert [t for t, _ in sp.events] == [2000, 3000]
    assert sp.coalesced == 0


def test_several_events_per_read_are_counted_as_coalesced_but_done_is_not() -> None:
    body = _completion(" a", 1) + _completion(" b", 2) + _completion(" c", 3) + USAGE_FINAL + DONE
    sp = _feed_all([body])
    assert len(sp.events) == 5
    assert sp.coalesced == 3  # four data events share one read; [DONE] is not timing data


def test_byte_at_a_time_feed_gives_one_event_per_completing_read() -> None:
    body = _completion(" a", 1) + _completion(" b", 2)
    sp = _feed_all([body[i : i + 1] for i in range(len(body))])
    assert len(sp.events) == 2
    assert sp.coalesced == 0
    assert sp.events[0][0] == 1000 * len(_completion(" a", 1))


def test_crlf_separators_and_comments() -> None:
    body = b": keep-alive\r\n\r\n" + _completion(" a", 1).replace(b"\n", b"\r\n")
    sp = _feed_all([body[:7], body[7:]])
    assert len(sp.events) == 2
    assert event_data(sp.events[0][1]) is None
    assert json.loads(event_data(sp.events[1][1]) or b"")["choices"][0]["text"] == " a"


def test_multiline_data_is_joined_and_leftover_is_reported() -> None:
    assert event_data(b'event: x\ndata: {"a":\ndata: 1}') == b'{"a":\n1}'
    sp = SseSplitter()
    sp.feed(b'data: {"partial', 1)
    assert sp.events == []
    assert sp.close() == b'data: {"partial'


def test_interpret_completions_with_continuous_usage() -> None:
    events = [
        (10, _completion(" a", 1)),
        (20, _completion(" bc", 3)),  # a chunk carrying two tokens
        (30, _completion("", 3, finish="length")),
        (31, USAGE_FINAL),
        (32, DONE),
    ]
    res = get_protocol("completions").interpret([(t, raw.rstrip(b"\n")) for t, raw in events])
    assert res.chunk_times_ns == [10, 20]
    assert res.chunk_tokens == [1, 2]
    assert res.text == " a bc"
    assert (res.prompt_tokens, res.completion_tokens, res.usage_source) == (5, 3, "usage")
    assert res.per_chunk_usage and res.done and res.complete and res.error is None


def test_interpret_without_usage_counts_one_token_per_content_chunk() -> None:
    events = [(1, _completion(" a")), (2, _completion(" b")), (3, _completion(" c", finish="stop"))]
    res = get_protocol("completions").interpret(events)
    assert res.chunk_tokens == [1, 1, 1]
    assert res.usage_source == "none" and res.completion_tokens is None
    assert not res.done and res.finished and res.complete


def test_interpret_chat_skips_role_only_chunk() -> None:
    role = _ev({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
    c1 = _ev({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]})
    c2 = _ev({"choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": "stop"}]})
    res = get_protocol("chat").interpret([(1, role), (2, c1), (3, c2), (4, DONE)])
    assert res.chunk_times_ns == [2, 3]
    assert res.text == "Hi there"


def test_interpret_flags_error_event_and_malformed_json() -> None:
    err = get_protocol("completions").interpret(
        [(1, _completion(" a", 1)), (2, _ev({"error": {"message": "boom"}}))]
    )
    assert err.error is not None and "boom" in err.error
    bad = get_protocol("completions").interpret([(1, b"data: {not json")])
    assert bad.error is not None and "malformed JSON" in bad.error


def test_interpret_truncated_stream_is_not_complete() -> None:
    res = get_protocol("completions").interpret([(1, _completion(" a", 1)), (2, _completion(" b", 2))])
    assert not res.complete
    assert res.usage_source == "usage_per_chunk" and res.completion_tokens == 2
