"""Caikit on the sim, gRPC and HTTP, against the shapes recorded from the real Caikit runtime.

Why compare with the recordings: the sim is only useful as a stand-in for Caikit if a client that
works against it works against the real runtime, so the stream's message structure, the HTTP
framing and the error answers are checked against ``tests/data/streams/caikit-*.json``.
"""

from __future__ import annotations

import json
import socket

import grpc
import httpx
import pytest
from google.protobuf import json_format

from harness.protocols.proto import caikit_data_model_nlp_pb2 as dm
from harness.protocols.proto import caikit_nlp_pb2 as pb
from harness.protocols.proto import caikit_nlp_pb2_grpc as pb_grpc
from recorded_streams import load_grpc, load_http

STREAM = "/api/v1/task/server-streaming-text-generation"
MODEL = [("mm-model-id", "sim-model")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(sim_server, **options: object) -> tuple[object, grpc.Channel]:
    port = free_port()
    sim = sim_server(grpc_port=port, **options)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    return sim, channel


def request(
    text: str, max_new: int, min_new: int | None = None
) -> pb.ServerStreamingTextGenerationTaskRequest:
    return pb.ServerStreamingTextGenerationTaskRequest(
        text=text, max_new_tokens=max_new, min_new_tokens=max_new if min_new is None else min_new
    )


def shape(d: object) -> object:
    """A message's structure: nested keys with value types, values dropped."""
    if isinstance(d, dict):
        return {k: shape(v) for k, v in d.items()}
    if isinstance(d, list):
        return [shape(v) for v in d]
    return type(d).__name__


def sse_events(body: bytes) -> list[tuple[str, dict]]:
    """(event name, JSON data) per event; Caikit frames with CRLF."""
    out = []
    for block in body.decode().split("\r\n\r\n"):
        if not block:
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\r\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_grpc_stream_matches_the_real_runtime(sim_server) -> None:
    sim, channel = start(sim_server, ttft_ms=20, itl_ms=2)
    stub = pb_grpc.NlpServiceStub(channel)
    msgs = list(
        stub.ServerStreamingTextGenerationTaskPredict(
            request("a b c d e", 8), metadata=[*MODEL, ("x-request-id", "c1")]
        )
    )
    ack, tokens = msgs[0], msgs[1:]
    assert ack.details.input_token_count == 5 and ack.details.generated_tokens == 0 and not ack.generated_text
    assert [m.details.generated_tokens for m in tokens] == list(range(1, 9))
    assert [m.details.finish_reason for m in tokens] == [dm.NOT_FINISHED] * 7 + [dm.MAX_TOKENS]
    assert "".join(m.generated_text for m in tokens) == " tok" * 8
    real = load_grpc("caikit-grpc-stream").decoded
    sim_dicts = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in msgs]
    assert [shape(d) for d in sim_dicts] == [shape(d) for d in real]
    sim.stop()  # type: ignore[attr-defined]
    truth = sim.truth()["c1"]  # type: ignore[attr-defined]
    assert truth.api == "caikit-grpc" and truth.prompt_tokens == 5 and truth.outcome == "length"
    assert truth.chunk_tokens == [1] * 8
    assert truth.ttft_ns is not None and truth.ttft_ns >= 19_900_000


def test_grpc_chunks_and_natural_stop(sim_server) -> None:
    _, channel = start(sim_server, ttft_ms=1, itl_ms=1, tokens_per_chunk=3, seed=5)
    stub = pb_grpc.NlpServiceStub(channel)
    msgs = list(stub.ServerStreamingTextGenerationTaskPredict(request("x", 7), metadata=MODEL))[1:]
    assert [m.details.generated_tokens for m in msgs] == [1, 4, 7]
    lengths = set()
    for _ in range(10):
        last = list(stub.ServerStreamingTextGenerationTaskPredict(request("x", 30, 5), metadata=MODEL))[-1]
        n = last.details.generated_tokens
        assert 5 <= n <= 30
        assert last.details.finish_reason == (dm.MAX_TOKENS if n == 30 else dm.EOS_TOKEN)
        lengths.add(n)
    assert len(lengths) > 1
    default = list(
        stub.ServerStreamingTextGenerationTaskPredict(
            pb.ServerStreamingTextGenerationTaskRequest(text="x", min_new_tokens=20), metadata=MODEL
        )
    )
    assert default[-1].details.generated_tokens == 20  # Caikit's default max_new_tokens


@pytest.mark.parametrize(
    ("metadata", "req", "code", "details"),
    [
        ([], request("x", 4), grpc.StatusCode.INVALID_ARGUMENT, "Missing required model ID"),
        ([("mm-model-id", "no-such-model")], request("x", 4), grpc.StatusCode.NOT_FOUND,
         "Model 'no-such-model' not loaded"),
        (MODEL, request("x", 4, 9), grpc.StatusCode.INVALID_ARGUMENT, "value check failed"),
    ],
)  # fmt: skip
def test_grpc_errors_are_the_real_runtimes(sim_server, metadata, req, code, details) -> None:
    _, channel = start(sim_server)
    with pytest.raises(grpc.RpcError) as err:
        list(pb_grpc.NlpServiceStub(channel).ServerStreamingTextGenerationTaskPredict(req, metadata=metadata))
    assert err.value.code() == code and err.value.details().startswith(details)
    if code == grpc.StatusCode.NOT_FOUND:
        real = load_grpc("caikit-grpc-error-unknown-model")
        assert (real.code, real.details) == (code.name, details)


def test_grpc_health_like_the_real_servers(sim_server) -> None:
    _, channel = start(sim_server)
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    for service in (b"", b"caikit.runtime.Nlp.NlpService", b"fmaas.GenerationService"):
        req = b"\x0a" + bytes([len(service)]) + service if service else b""
        assert check(req, timeout=5) == b"\x08\x01"  # SERVING
    with pytest.raises(grpc.RpcError) as err:
        check(b"\x0a\x07nothing", timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_http_sse_matches_the_real_runtime(sim_server) -> None:
    sim = sim_server(ttft_ms=10, itl_ms=1)
    body = {
        "model_id": "sim-model",
        "inputs": "a b c",
        "parameters": {"max_new_tokens": 8, "min_new_tokens": 8},
    }
    reads = []
    with httpx.stream("POST", sim.base_url + STREAM, json=body, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        reads = list(resp.iter_raw())
    events = sse_events(b"".join(reads))
    assert {name for name, _ in events} == {"message"}
    payloads = [p for _, p in events]
    assert payloads[0]["details"]["input_token_count"] == 3 and payloads[0]["generated_text"] == ""
    assert [p["details"]["generated_tokens"] for p in payloads] == list(range(9))
    assert [p["details"]["finish_reason"] for p in payloads[1:]] == ["NOT_FINISHED"] * 7 + ["MAX_TOKENS"]
    real = load_http("caikit-http-stream")
    real_payloads = [p for _, p in sse_events(real.body)]
    assert [shape(p) for p in payloads] == [shape(p) for p in real_payloads]
    # The same separators as the real runtime's json.dumps, so byte-level parsers see the same text.
    assert b'"details": {"finish_reason": "NOT_FINISHED", "generated_tokens": 0, ' in b"".join(reads)


def test_http_errors_are_the_real_runtimes(sim_server) -> None:
    sim = sim_server()
    unknown = {"model_id": "no-such-model", "inputs": "a", "parameters": {"max_new_tokens": 4}}
    resp = httpx.post(sim.base_url + STREAM, json=unknown, timeout=10)
    real = load_http("caikit-http-error-unknown-model")
    assert resp.status_code == real.status == 200
    (name, data), (real_name, real_data) = sse_events(resp.content)[0], sse_events(real.body)[0]
    assert (name, data["code"], data["details"]) == (real_name, real_data["code"], real_data["details"])
    bad = {"model_id": "sim-model", "inputs": "a", "parameters": {"max_new_tokens": 2, "min_new_tokens": 5}}
    resp = httpx.post(sim.base_url + STREAM, json=bad, timeout=10)
    assert resp.status_code == 200 and sse_events(resp.content)[0][1]["code"] == 400
    resp = httpx.post(sim.base_url + STREAM, content=b"notjson", timeout=10)
    assert resp.status_code == 422 and resp.json()["code"] == 422


def test_http_unary_and_info(sim_server) -> None:
    sim = sim_server(ttft_ms=1, itl_ms=1)
    body = {
        "model_id": "sim-model",
        "inputs": "a b",
        "parameters": {"max_new_tokens": 3, "min_new_tokens": 3},
    }
    out = httpx.post(sim.base_url + "/api/v1/task/text-generation", json=body, timeout=10).json()
    assert (
        out["generated_tokens"] == 3
        and out["input_token_count"] == 2
        and out["finish_reason"] == "MAX_TOKENS"
    )
    models = httpx.get(sim.base_url + "/info/models", timeout=5).json()["models"]
    assert [(m["name"], m["loaded"]) for m in models] == [("sim-model", True)]


def test_no_openai_models_hides_only_the_models_route(sim_server) -> None:
    plain = sim_server()
    assert httpx.get(plain.base_url + "/v1/models", timeout=5).status_code == 200
    sim = sim_server(no_openai_models=True)
    assert httpx.get(sim.base_url + "/v1/models", timeout=5).status_code == 404
    assert httpx.get(sim.base_url + "/health", timeout=5).status_code == 200
    resp = httpx.post(
        sim.base_url + "/v1/completions",
        json={"model": "sim-model", "prompt": "a", "max_tokens": 2, "ignore_eos": True},
        timeout=10,
    )
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 2
