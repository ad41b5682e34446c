"""Faults a hostile server causes are counted and classified, never silent (real Locust steps).

Each test drives one real Locust step through ``run_step`` against a tiny server on
127.0.0.1 (``hostile_http``) and checks the record counts against what the server saw.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile_http import BAD_EVENTS, WrongTypes

from fake_http import serve
from harness.load.runner import run_step
from harness.records import read_records
from load_plans import sim_plan


@pytest.fixture
def wrong_types() -> Iterator[str]:
    WrongTypes.posts = WrongTypes.bad = 0
    yield from serve(WrongTypes)


def _rows(path: Path) -> list[dict[str, Any]]:
    return read_records(path).to_pylist()


def test_wrong_payload_types_are_bad_payload_and_the_rest_is_measured(
    tmp_path: Path, wrong_types: str
) -> None:
    plan = sim_plan(tmp_path, base_url=wrong_types, target=3, duration_s=2.0, timeout_s=5.0)
    out = run_step(plan, tmp_path, max_wall_s=40)
    rows = _rows(out.records_path)
    classes = Counter(r["error_class"] for r in rows)
    print(f"sent {WrongTypes.posts}, bad {WrongTypes.bad}, records {len(rows)}, classes {dict(classes)}")
    assert WrongTypes.bad >= len(BAD_EVENTS), "every wrong-type case was sent at least once"
    assert len(rows) == WrongTypes.posts, "every request the server answered has a record"
    assert classes["bad_payload"] == WrongTypes.bad
    assert classes[None] == WrongTypes.posts - WrongTypes.bad
    for r in rows:
        if r["error_class"] == "bad_payload":
            assert r["error_message"].startswith("bad payload: PayloadError"), r["error_message"]
            assert len(r["error_message"]) <= 300
        else:
            assert r["output_tokens"] == 5 and len(r["chunk_times_ns"]) == 5
    assert out.wall_s < 30, "the step ended on time instead of waiting for lost requests"


@pytest.mark.parametrize("api", ["completions", "chat", "tgi", "caikit-http", "tgis", "caikit-grpc"])
def test_no_interpreter_raises_on_hostile_events(api: str) -> None:
    """``read_stream`` turns whatever an interpreter raises into an error result (unit level)."""
    from harness.protocols.registry import get_protocol

    spec = get_protocol(api)
    hostile = [
        b'data: {"choices": {"0": 1}, "token": "x", "details": [], "generated_text": 5}',
        b'data: {"choices": [{"delta": "x", "text": 1}], "token": {"text": 3}}',
        b"\xff\x00\x01garbage",
    ]
    for raw in hostile:
        res = spec.read_stream([(1, raw)])  # never raises
        assert isinstance(res.text, str)
        if spec.transport == "grpc" or raw is hostile[0]:
            assert res.error, (api, raw)
