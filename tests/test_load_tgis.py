"""The TGIS gRPC load user: request, status mapping, stream interpretation, and real runs on the sim.

``stream_generate`` is exercised with a plain (thread-blocking) grpcio client,
and the Locust user through ``run_step`` (gevent-patched grpcio, one and two
Locust processes). Assertions are about counts, ordering and classes, never speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from harness.backends.process import free_port
from harness.load.grpcstream import GrpcStream, classify, stream_call
from harness.load.plan import LoadPlan, PlanError
from harness.load.prompts import PromptSpec
from harness.load.runner import run_step
from harness.protocols.proto import generation_pb2 as pb
from harness.protocols.tgis import METHOD, interpret_tgis, tgis_request
from harness.records import ERROR_CLASSES, read_records
from load_plans import sim_plan

S = grpc.StatusCode


def _plan(tmp_path: Path, grpc_target: str, **kw: Any) -> LoadPlan:
    kw = {"prompt_tokens": 16, "output_tokens": 10, "target": 3, "requests": 9, **kw}
    return sim_plan(tmp_path, api="tgis", grpc_target=grpc_target, **kw)


def _stream(*msgs: Any, code: grpc.StatusCode = S.OK) -> GrpcStream:
    return GrpcStream(
        sent_ns=0,
        end_ns=100,
        arrivals_ns=[10 * (i + 1) for i in range(len(msgs))],
        messages=[m.SerializeToString() for m in msgs],
        code=code,
    )


def stream_generate(channel: grpc.Channel, request: Any, timeout_s: float, metadata: list) -> GrpcStream:
    """One ``GenerateStream`` call the way the load user makes it: raw bytes in and out."""
    return stream_call(channel.unary_stream(METHOD), request.SerializeToString(), timeout_s, metadata)


# --- pure parts --------------------------------------------------------------------------------


def test_request_asks_for_a_fixed_length_only_with_ignore_eos(tmp_path: Path) -> None:
    spec = PromptSpec(prompt_tokens=2, output_tokens=9, prompt="hello there")
    req = tgis_request(_plan(tmp_path, "127.0.0.1:1"), spec)
    assert req.request.text == "hello there" and req.model_id == "sim-model"
    assert (req.params.stopping.max_new_tokens, req.params.stopping.min_new_tokens) == (9, 9)
    assert req.params.method == pb.GREEDY
    free = tgis_request(_plan(tmp_path, "127.0.0.1:1", ignore_eos=False, temperature=0.5), spec)
    assert (free.params.stopping.max_new_tokens, free.params.stopping.min_new_tokens) == (9, 0)
    assert free.params.method == pb.SAMPLE and free.params.sampling.temperature == pytest.approx(0.5)


def test_plan_needs_a_grpc_target_for_tgis(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="grpc_target"):
        _plan(tmp_path, None)  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="host:port"):
        _plan(tmp_path, "localhost")


@pytest.mark.parametrize(
    ("code", "received", "expected"),
    [
        (S.OK, 3, None),
        (S.UNAVAILABLE, 0, "connect"),
        (S.DEADLINE_EXCEEDED, 0, "timeout"),
        (S.DEADLINE_EXCEEDED, 4, "timeout"),
        (S.RESOURCE_EXHAUSTED, 0, "http_4xx"),
        (S.INVALID_ARGUMENT, 0, "http_4xx"),
        (S.INTERNAL, 0, "http_5xx"),
        (S.UNKNOWN, 0, "http_5xx"),
        (S.UNAVAILABLE, 1, "stream_broken"),  # after the ack the server had answered: the stream broke
        (S.INTERNAL, 5, "stream_broken"),
        (S.DATA_LOSS, 5, "bad_payload"),
    ],
)
def test_status_codes_map_to_error_classes(
    code: grpc.StatusCode, received: int, expected: str | None
) -> None:
    assert classify(code, received) == expected
    assert expected is None or expected in ERROR_CLASSES


def test_ack_is_not_the_first_token_and_counts_are_cumulative() -> None:
    stream = _stream(
        pb.GenerationResponse(input_token_count=7),
        pb.GenerationResponse(input_token_count=7, generated_token_count=2, text=" a b"),
        pb.GenerationResponse(generated_token_count=3, text=" c"),
        pb.GenerationResponse(generated_token_count=5, text=" d e", stop_reason=pb.MAX_TOKENS),
    )
    res = interpret_tgis(stream.events)
    assert res.chunk_times_ns == [20, 30, 40]  # the ack at t=10 is not a chunk
    assert res.chunk_tokens == [2, 1, 2]
    assert (res.prompt_tokens, res.completion_tokens, res.usage_source) == (7, 5, "usage")
    assert res.text == " a b c d e" and res.complete
    outcome = stream.outcome()
    assert (outcome.status, outcome.error_class, outcome.error_message) == (200, None, None)
    assert outcome.body_bytes > 0


def test_cut_stream_keeps_chunks_and_says_why() -> None:
    stream = _stream(
        pb.GenerationResponse(input_token_count=4),
        pb.GenerationResponse(generated_token_count=1, text=" a"),
        code=S.UNAVAILABLE,
    )
    stream.details = "simulated fault disconnect_mid_stream"
    res = interpret_tgis(stream.events)
    assert not res.complete and res.usage_source == "usage_per_chunk" and res.completion_tokens == 1
    outcome = stream.outcome()
    assert outcome.error_class == "stream_broken" and outcome.status == 503
    assert outcome.error_message == "gRPC UNAVAILABLE: simulated fault disconnect_mid_stream"


def test_stop_reason_error_is_an_error() -> None:
    res = interpret_tgis(_stream(pb.GenerationResponse(generated_token_count=1, stop_reason=pb.ERROR)).events)
    assert res.error is not None and "ERROR" in res.error


# --- against the sim ------------------------------------------------------------------------------


def test_stream_generate_stamps_each_message(tmp_path: Path, sim_server: Any) -> None:
    port = free_port()
    sim_server(ttft_ms=40, itl_ms=5, grpc_port=port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        spec = PromptSpec(prompt_tokens=3, output_tokens=6, prompt="a b c")
        stream = stream_generate(channel, tgis_request(_plan(tmp_path, f"127.0.0.1:{port}"), spec), 10, [])
    assert stream.code == S.OK and len(stream.messages) == 7  # ack + one message per token
    # Raw bytes: not even protobuf decoding happens on the read path (the Finisher's interpreter does it).
    assert all(isinstance(m, bytes) for m in stream.messages)
    assert stream.arrivals_ns == sorted(stream.arrivals_ns)
    assert stream.sent_ns < stream.arrivals_ns[0] and stream.arrivals_ns[-1] <= stream.end_ns
    res = interpret_tgis(stream.events)
    assert res.chunk_tokens == [1] * 6 and res.chunk_times_ns == stream.arrivals_ns[1:]
    # TTFT is measured to the first token, not to the ack: the sim holds the first token for ~40 ms.
    assert res.chunk_times_ns[0] - stream.arrivals_ns[0] > 20e6


def test_stream_generate_reports_a_dead_server_as_connect(tmp_path: Path) -> None:
    port = free_port()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        spec = PromptSpec(prompt_tokens=1, output_tokens=2, prompt="a")
        stream = stream_generate(channel, tgis_request(_plan(tmp_path, f"127.0.0.1:{port}"), spec), 5, [])
    assert stream.code == S.UNAVAILABLE and stream.outcome().error_class == "connect"


@pytest.mark.parametrize("processes", [1, 2])
def test_tgis_run_records_match_the_server(tmp_path: Path, sim_server: Any, processes: int) -> None:
    port = free_port()
    sim = sim_server(ttft_ms=30, itl_ms=3, grpc_port=port)
    plan = _plan(tmp_path, f"127.0.0.1:{port}", processes=processes, requests=10)
    out = run_step(plan, tmp_path / "step", headers={"Authorization": "Bearer tgis-secret-1"})
    rows = read_records(out.records_path).to_pylist()
    assert len(rows) == 10
    assert {r["worker"] for r in rows} == set(range(processes))
    for r in rows:
        assert r["api"] == "tgis" and r["status"] == 200
        assert r["error_class"] is None, r["error_message"]
        assert r["sent_ns"] < r["first_token_ns"] == r["chunk_times_ns"][0] <= r["end_ns"]
        assert r["chunk_times_ns"] == sorted(r["chunk_times_ns"])
        assert sum(r["chunk_tokens"]) == r["output_tokens"] == r["requested_output_tokens"] == 10
        assert r["token_source"] == "usage" and r["client_output_tokens"] == 10
        assert r["prompt_tokens"] == 16
        # Prewarmed (the default): the channel was READY before the clock, every call reused it.
        assert r["reused_connection"] is True and r["connect_ns"] is None
    assert out.health["prewarm_failures"] == 0 and out.health["prewarm_users"] == plan.target
    sim.stop()
    truth = sim.truth()
    assert set(truth) == {f"s-{r['request_id']}" for r in rows}  # x-request-id reached the server
    assert {t.api for t in truth.values()} == {"tgis"}
    for path in [*(tmp_path / "step").iterdir(), out.records_path]:
        assert b"tgis-secret-1" not in path.read_bytes(), path


def test_tgis_faults_are_classified_and_the_run_goes_on(tmp_path: Path, sim_server: Any) -> None:
    port = free_port()
    schedule = "http_500@1,reset_before_headers@2,disconnect_mid_stream@3,http_429@4,stall:4@5"
    sim_server(ttft_ms=10, itl_ms=2, grpc_port=port, fault_schedule=schedule)
    plan = _plan(tmp_path, f"127.0.0.1:{port}", target=1, requests=6, timeout_s=1.5)
    out = run_step(plan, tmp_path / "step")
    rows = sorted(read_records(out.records_path).to_pylist(), key=lambda r: r["scheduled_ns"])
    assert [r["error_class"] for r in rows] == [
        "http_5xx",
        "connect",
        "stream_broken",
        "http_4xx",
        "timeout",
        None,
    ]
    assert [r["status"] for r in rows] == [500, 503, 503, 429, 504, 200]
    assert rows[0]["error_message"].startswith("gRPC INTERNAL")
    assert rows[2]["chunk_times_ns"] and rows[2]["first_token_ns"] is not None  # kept what it received
    assert rows[5]["output_tokens"] == 10


def test_tgis_cold_channels_connect_on_each_users_first_call(tmp_path: Path, sim_server: Any) -> None:
    port = free_port()
    sim_server(ttft_ms=10, itl_ms=2, grpc_port=port)
    plan = _plan(tmp_path, f"127.0.0.1:{port}", connections="cold")
    out = run_step(plan, tmp_path / "step")
    rows = sorted(read_records(out.records_path).to_pylist(), key=lambda r: r["sent_ns"])
    assert len(rows) == 9 and all(r["error_class"] is None for r in rows)
    assert [r["reused_connection"] for r in rows[:3]] == [False] * 3  # one cold channel per user
    assert all(r["reused_connection"] for r in rows[3:])
    assert all(r["connect_ns"] is None for r in rows)  # the channel connects inside the call: not separable
    assert out.health["connections"] == "cold" and out.health["prewarm_users"] == 0
