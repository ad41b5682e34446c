"""TGIS gRPC on the sim: a real grpcio client consumes ``fmaas.GenerationService``."""

from __future__ import annotations

import socket

import grpc
import httpx
import pytest

from harness.protocols.proto import generation_pb2 as pb
from harness.protocols.proto import generation_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(sim_server, **options: object) -> tuple[object, pb_grpc.GenerationServiceStub]:
    port = free_port()
    sim = sim_server(grpc_port=port, **options)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    return sim, pb_grpc.GenerationServiceStub(channel)


def stream_request(text: str, max_new: int, min_new: int | None = None, details: bool = False) -> object:
    return pb.SingleGenerationRequest(
        model_id="sim-model",
        request=pb.GenerationRequest(text=text),
        params=pb.Parameters(
            stopping=pb.StoppingCriteria(
                max_new_tokens=max_new, min_new_tokens=max_new if min_new is None else min_new
            ),
            response=pb.ResponseOptions(generated_tokens=details),
        ),
    )


def test_generate_stream_acks_then_streams_exact_counts(sim_server) -> None:
    sim, stub = start(sim_server, ttft_ms=20, itl_ms=2)
    msgs = list(
        stub.GenerateStream(stream_request("a b c d e", 9, details=True), metadata=[("x-request-id", "g1")])
    )
    ack, tokens = msgs[0], msgs[1:]
    assert ack.input_token_count == 5 and ack.generated_token_count == 0 and ack.text == ""
    assert len(tokens) == 9
    assert [m.generated_token_count for m in tokens] == list(range(1, 10))
    assert "".join(m.text for m in tokens) == " tok" * 9
    assert all(len(m.tokens) == 1 for m in tokens)
    assert [m.stop_reason for m in tokens] == [pb.NOT_FINISHED] * 8 + [pb.MAX_TOKENS]
    sim.stop()  # type: ignore[attr-defined]
    truth = sim.truth()["g1"]  # type: ignore[attr-defined]
    assert truth.api == "tgis" and truth.prompt_tokens == 5 and truth.outcome == "length"
    assert truth.chunk_tokens == [1] * 9
    assert truth.ttft_ns is not None and truth.ttft_ns >= 19_900_000  # exact-mode timing applies


def test_tokens_per_chunk_and_natural_stop(sim_server) -> None:
    _, stub = start(sim_server, ttft_ms=1, itl_ms=1, tokens_per_chunk=4, seed=3)
    msgs = list(stub.GenerateStream(stream_request("x", 10)))[1:]
    assert [m.generated_token_count for m in msgs] == [1, 5, 9, 10]
    assert not any(m.tokens for m in msgs)  # details only when asked for
    lengths = set()
    for _ in range(12):
        last = list(stub.GenerateStream(stream_request("x", 30, min_new=5)))[-1]
        assert 5 <= last.generated_token_count <= 30
        expected = pb.MAX_TOKENS if last.generated_token_count == 30 else pb.EOS_TOKEN
        assert last.stop_reason == expected
        lengths.add(last.generated_token_count)
    assert len(lengths) > 1


def test_batched_generate_and_metrics(sim_server) -> None:
    sim, stub = start(sim_server, ttft_ms=5, itl_ms=1)
    resp = stub.Generate(
        pb.BatchedGenerationRequest(
            model_id="sim-model",
            requests=[pb.GenerationRequest(text="a b"), pb.GenerationRequest(text="c d e")],
            params=pb.Parameters(stopping=pb.StoppingCriteria(max_new_tokens=4, min_new_tokens=4)),
        )
    )
    assert [(r.input_token_count, r.generated_token_count, r.stop_reason) for r in resp.responses] == [
        (2, 4, pb.MAX_TOKENS),
        (3, 4, pb.MAX_TOKENS),
    ]
    assert resp.responses[0].text == " tok" * 4
    text = httpx.get(sim.base_url + "/metrics").text  # type: ignore[attr-defined]
    assert (
        "vllm:generation_tokens_total" in text
        and " 8\n" in text.split("vllm:generation_tokens_total")[1][:60]
    )
    info = stub.ModelInfo(pb.ModelInfoRequest(model_id="sim-model"))
    assert info.max_sequence_length == 32768
    tok = stub.Tokenize(pb.BatchedTokenizeRequest(requests=[pb.TokenizeRequest(text="a b c")]))
    assert tok.responses[0].token_count == 3


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("http_429", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("http_503", grpc.StatusCode.UNAVAILABLE),
        ("http_500", grpc.StatusCode.INTERNAL),
    ],
)
def test_http_faults_become_grpc_status(sim_server, fault: str, code: grpc.StatusCode) -> None:
    _, stub = start(sim_server, ttft_ms=1, itl_ms=1, fault_schedule=f"{fault}@1")
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(stream_request("a", 3)))
    assert err.value.code() == code and fault in (err.value.details() or "")
    assert len(list(stub.GenerateStream(stream_request("a", 3)))) == 4  # request 2 is clean


def test_disconnect_mid_stream_aborts_after_some_tokens(sim_server) -> None:
    _, stub = start(sim_server, ttft_ms=1, itl_ms=1, fault_schedule="disconnect_mid_stream@1")
    got = []
    with pytest.raises(grpc.RpcError) as err:
        for m in stub.GenerateStream(stream_request("a", 10)):
            got.append(m)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert 1 < len(got) < 11 and got[-1].stop_reason == pb.NOT_FINISHED


def test_engine_mode_streams_over_grpc(sim_server) -> None:
    sim, stub = start(
        sim_server,
        mode="engine",
        gpu="h100-80gb",
        model_profile="mistral-7b",
        max_model_len=4096,
        time_scale=2,
    )
    msgs = list(stub.GenerateStream(stream_request("w " * 50, 6), metadata=[("x-request-id", "e1")]))
    assert [m.generated_token_count for m in msgs] == [0, 1, 2, 3, 4, 5, 6]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(stream_request("w " * 4000, 200)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    sim.stop()  # type: ignore[attr-defined]
    assert sim.truth()["e1"].chunk_tokens == [1] * 6  # type: ignore[attr-defined]
