"""Faults a hostile server causes are counted and classified, never silent (real Locust steps).

Each test drives one real Locust step through ``run_step`` against a tiny server on
127.0.0.1 (``hostile_http``) and checks the record counts against what the server saw.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hostile_http import BAD_EVENTS, Endless, RetryAfter, WrongTypes

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


class PeakRss:
    """Samples the summed RSS of this process's Locust children every 20 ms, in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    if "locust" in " ".join(child.cmdline()):
                        total += child.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def endless() -> Iterator[str]:
    Endless.posts = 0
    yield from serve(Endless)


def test_an_endless_stream_is_cut_and_memory_stays_flat(tmp_path: Path, endless: str) -> None:
    """Default bound (16 MiB / 65,536 chunks): each endless response is cut, the step ends on time."""
    plan = sim_plan(tmp_path, base_url=endless, target=2, duration_s=2.0, timeout_s=20.0)
    with PeakRss() as rss:
        out = run_step(plan, tmp_path, max_wall_s=60)
    rows = _rows(out.records_path)
    classes = Counter(r["error_class"] for r in rows)
    print(f"posts {Endless.posts}, records {len(rows)}, classes {dict(classes)}, "
          f"peak Locust RSS {rss.peak / 2**20:.0f} MiB, wall {out.wall_s:.1f} s")  # fmt: skip
    assert rows and classes == {"stream_too_large": len(rows)}
    assert len(rows) == Endless.posts
    assert all("16777216 bytes" in r["error_message"] for r in rows)
    assert 0 < rss.peak < 400 * 2**20, f"peak RSS {rss.peak / 2**20:.0f} MiB"
    assert out.wall_s < 15, "the step finished instead of reading until the timeout"


@pytest.fixture
def retry_after() -> Iterator[str]:
    RetryAfter.posts = RetryAfter.refused = 0
    yield from serve(RetryAfter)


def test_retry_after_is_counted_and_never_honoured(tmp_path: Path, retry_after: str) -> None:
    """Every 429/503 keeps its Retry-After in the record; the step's metrics count them; no request is retried."""
    from harness.matrix import Step
    from harness.metrics import compute_step_metrics
    from harness.scenario import Slo

    plan = sim_plan(tmp_path, base_url=retry_after, target=2, requests=20, timeout_s=5.0)
    out = run_step(plan, tmp_path, max_wall_s=40)
    table = read_records(out.records_path)
    rows = table.to_pylist()
    refused = [r for r in rows if r["status"] in (429, 503)]
    print(f"posts {RetryAfter.posts}, records {len(rows)}, refused {len(refused)}")
    assert len(rows) == RetryAfter.posts == 20, "one request per record: nothing was retried"
    assert len(refused) == RetryAfter.refused > 0
    assert all(r["retry_after"] == "7" for r in refused)
    assert all(r["retry_after"] is None for r in rows if r["status"] == 200)
    metrics = compute_step_metrics(table.to_pandas(), step=Step("s", "concurrency", 2.0), slo=Slo())
    assert metrics.retry_after_responses == len(refused)
    assert metrics.errors["http_4xx"] + metrics.errors["http_5xx"] == len(refused)


def test_an_endless_grpc_stream_is_cancelled_past_the_bound() -> None:
    """The gRPC transport applies the same bound: the call is cancelled and its messages dropped."""
    from harness.load.bounds import Bounds
    from harness.load.grpcstream import stream_call

    class Endless:
        cancelled = False

        def __iter__(self) -> Iterator[bytes]:
            while not self.cancelled:
                yield b"x" * 100

        def cancel(self) -> None:
            self.cancelled = True

    responses = Endless()
    out = stream_call(lambda *a, **kw: responses, b"", 5.0, [], Bounds(max_bytes=10**9, max_reads=50))
    outcome = out.outcome()
    assert responses.cancelled and outcome.error_class == "stream_too_large"
    assert "50 chunks" in (outcome.error_message or "") and not out.messages
    out = stream_call(lambda *a, **kw: Endless(), b"", 5.0, [], Bounds(max_bytes=1000, max_reads=10**6))
    assert out.outcome().error_class == "stream_too_large" and "1000 bytes" in (out.too_large or "")
