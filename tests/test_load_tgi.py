"""The TGI ``/generate_stream`` load user: request body, stream interpretation, and real runs on the sim.

The parser tests feed TGI's event JSON (as the sim and TGI's router write it);
the run tests drive real Locust through ``run_step`` and compare the records
with the sim's write log. They assert counts and classifications, never speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.load.plan import LoadPlan
from harness.load.prompts import PromptSpec
from harness.load.runner import run_step
from harness.protocols.registry import get_protocol
from harness.protocols.tgi import PATH, interpret_tgi, tgi_body
from harness.records import read_records
from load_plans import sim_plan


def _event(index: int, text: str, *, special: bool = False, final: dict[str, Any] | None = None) -> bytes:
    obj: dict[str, Any] = {
        "index": index,
        "token": {"id": 100 + index, "text": text, "logprob": -0.1, "special": special},
        "generated_text": None,
        "details": None,
        "top_tokens": None,
    }
    if final is not None:
        obj["generated_text"] = final.pop("generated_text", "")
        obj["details"] = final
    return b"data:" + orjson.dumps(obj)


def _plan(tmp_path: Path, base_url: str = "http://127.0.0.1:1", **kw: Any) -> LoadPlan:
    kw = {"prompt_tokens": 20, "output_tokens": 12, "target": 3, "requests": 9, **kw}
    return sim_plan(tmp_path, api="tgi", base_url=base_url, **kw)


# --- request and parsing ------------------------------------------------------------------


def test_body_asks_for_details_and_greedy_without_temperature(tmp_path: Path) -> None:
    spec = PromptSpec(prompt_tokens=3, output_tokens=7, prompt="one two three")
    body = tgi_body(_plan(tmp_path), spec)
    assert body == {
        "inputs": "one two three",
        "parameters": {
            "max_new_tokens": 7,
            "details": True,
            "decoder_input_details": False,
            "do_sample": False,
        },
    }
    hot = tgi_body(_plan(tmp_path, temperature=0.7), spec)["parameters"]
    assert hot["do_sample"] is True and hot["temperature"] == 0.7
    assert get_protocol("tgi").path == PATH == "/generate_stream"


def test_one_chunk_per_event_and_counts_from_details() -> None:
    events = [
        (1_000, _event(1, " a")),
        (2_000, _event(2, " b")),
        (2_000, _event(3, " c")),  # same read as the previous one: same stamp, still its own chunk
        (
            3_500,
            _event(
                4,
                "</s>",
                special=True,
                final={
                    "generated_text": " a b c",
                    "finish_reason": "eos_token",
                    "generated_tokens": 4,
                    "seed": None,
                    "input_length": 17,
                },
            ),
        ),
    ]
    res = interpret_tgi(events)
    assert res.chunk_times_ns == [1_000, 2_000, 2_000, 3_500]
    assert res.chunk_tokens == [1, 1, 1, 1]
    assert res.text == " a b c"  # the special EOS token has no text
    assert (res.completion_tokens, res.usage_source, res.prompt_tokens) == (4, "usage", 17)
    assert res.complete and res.error is None


def test_stream_without_final_event_is_incomplete_and_has_no_usage() -> None:
    res = interpret_tgi([(1, _event(1, " a")), (2, _event(2, " b"))])
    assert not res.complete
    assert res.usage_source == "none" and res.completion_tokens is None
    assert res.chunk_tokens == [1, 1]


def test_old_tgi_without_input_length_leaves_prompt_tokens_unknown() -> None:
    final = {"generated_text": " a", "finish_reason": "length", "generated_tokens": 1, "seed": None}
    res = interpret_tgi([(5, _event(1, " a", final=final))])
    assert res.prompt_tokens is None and res.completion_tokens == 1 and res.complete


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'data:{"error":"Request failed during generation","error_type":"generation"}', "generation"),
        (b'data:{"index":0,"token":{"id": <<not json', "malformed JSON"),
        (b"data:[1,2]", "not a JSON object"),
    ],
)
def test_error_events_and_garbage_are_reported(raw: bytes, needle: str) -> None:
    res = interpret_tgi([(1, _event(1, " a")), (2, raw), (3, _event(2, " b"))])
    assert res.error is not None and needle in res.error
    assert res.chunk_tokens == [1]  # parsing stops at the bad event


def test_comments_and_keepalives_are_ignored() -> None:
    final = {"generated_text": " a", "finish_reason": "length", "generated_tokens": 1, "seed": None}
    res = interpret_tgi([(1, b": keep-alive"), (2, _event(1, " a", final=final))])
    assert res.chunk_times_ns == [2] and res.complete


# --- real runs against the sim ---------------------------------------------------------------


def test_tgi_run_records_match_the_server(tmp_path: Path, sim_server: Any) -> None:
    sim = sim_server(ttft_ms=30, itl_ms=3, api="tgi", tokens_per_chunk=2)
    plan = _plan(tmp_path, sim.base_url)
    out = run_step(plan, tmp_path / "step")
    rows = read_records(out.records_path).to_pylist()
    assert len(rows) == 9
    for r in rows:
        assert r["api"] == "tgi" and r["status"] == 200
        assert r["error_class"] is None, r["error_message"]
        assert r["sent_ns"] < r["first_token_ns"] == r["chunk_times_ns"][0] <= r["end_ns"]
        assert r["chunk_tokens"] == [1] * 12  # one token per TGI event, even when written two at a time
        assert r["output_tokens"] == r["client_output_tokens"] == r["requested_output_tokens"] == 12
        assert r["token_source"] == "usage"
        assert r["prompt_tokens"] == 20  # details.input_length: the sim counts one token per word
        # Two events per socket write: the second lands in the same read, and is counted as coalesced.
        assert 1 <= r["coalesced_chunks"] <= 11
    sim.stop()
    truth = sim.truth()
    assert len(truth) == 9
    assert {t.api for t in truth.values()} == {"tgi"}
    assert sum(sum(t.chunk_tokens) for t in truth.values()) == sum(r["output_tokens"] for r in rows)
    # The request id the user sends joins each record to the server's own log.
    assert set(truth) == {f"s-{r['request_id']}" for r in rows}


def test_tgi_faults_are_classified_and_the_run_goes_on(tmp_path: Path, sim_server: Any) -> None:
    schedule = "http_500@1,disconnect_mid_stream@2,malformed_sse@3,http_429@4,reset_before_headers@5"
    sim = sim_server(ttft_ms=10, itl_ms=2, api="tgi", fault_schedule=schedule)
    plan = _plan(tmp_path, sim.base_url, target=1, requests=6)
    out = run_step(plan, tmp_path / "step")
    rows = sorted(read_records(out.records_path).to_pylist(), key=lambda r: r["scheduled_ns"])
    classes = [r["error_class"] for r in rows]
    assert classes == ["http_5xx", "stream_broken", "bad_payload", "http_4xx", "connect", None]
    assert rows[0]["status"] == 500 and rows[0]["error_message"].startswith("HTTP 500")
    assert rows[3]["status"] == 429
    assert rows[1]["chunk_times_ns"]  # a broken stream keeps what it received
    assert rows[5]["output_tokens"] == 12
