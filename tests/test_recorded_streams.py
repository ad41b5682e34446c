"""The committed protos against bytes recorded from the real TGIS and Caikit servers.

Why: ``caikit_nlp.proto`` was cut down by hand from the runtime's dump and ``generation.proto``
came from TGIS; a wrong field number would decode silently into an unknown field and the
client would read zeros. Re-encoding byte-for-byte and finding no unknown field proves the
field numbers and types match what the servers send.
"""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from google.protobuf.unknown_fields import UnknownFieldSet

from harness.protocols.proto import caikit_data_model_nlp_pb2, caikit_nlp_pb2, generation_pb2
from recorded_streams import load_grpc, load_http, names

RESPONSE_TYPES = {
    "/fmaas.GenerationService/GenerateStream": (
        generation_pb2.SingleGenerationRequest,
        generation_pb2.GenerationResponse,
    ),
    "/caikit.runtime.Nlp.NlpService/ServerStreamingTextGenerationTaskPredict": (
        caikit_nlp_pb2.ServerStreamingTextGenerationTaskRequest,
        caikit_data_model_nlp_pb2.GeneratedTextStreamResult,
    ),
}


def _no_unknown_fields(msg) -> None:
    assert len(UnknownFieldSet(msg)) == 0, f"{type(msg).__name__} has unknown fields"
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        for item in value if field.is_repeated else [value]:
            _no_unknown_fields(item)


def test_every_protocol_has_recordings() -> None:
    stems = names()
    for prefix in ("vllm012-completions", "vllm012-chat", "tgis-generate-stream", "caikit-grpc-stream",
                   "caikit-http-stream", "vllm032-completions", "vllm032-chat"):  # fmt: skip
        assert prefix in stems


@pytest.mark.parametrize("name", names("grpc"))
def test_grpc_recordings_decode_exactly(name: str) -> None:
    rec = load_grpc(name)
    req_type, resp_type = RESPONSE_TYPES[rec.method]
    req = req_type.FromString(rec.request)
    _no_unknown_fields(req)
    assert req.SerializeToString() == rec.request
    for raw, decoded in zip(rec.messages, rec.decoded, strict=True):
        msg = resp_type.FromString(raw)
        _no_unknown_fields(msg)
        assert msg.SerializeToString() == raw
        assert json_format.MessageToDict(msg, preserving_proto_field_name=True) == decoded


def test_caikit_grpc_stream_shape() -> None:
    rec = load_grpc("caikit-grpc-stream")
    msgs = [caikit_data_model_nlp_pb2.GeneratedTextStreamResult.FromString(b) for b in rec.messages]
    assert rec.code == "OK" and ("mm-model-id", "tiny-llama") in rec.metadata
    assert msgs[0].details.input_token_count > 0 and msgs[0].details.generated_tokens == 0
    counts = [m.details.generated_tokens for m in msgs[1:]]
    assert counts == sorted(counts) and counts[-1] == 8
    assert msgs[-1].details.finish_reason == caikit_data_model_nlp_pb2.MAX_TOKENS
    assert all(m.details.finish_reason == caikit_data_model_nlp_pb2.NOT_FINISHED for m in msgs[:-1])


def test_caikit_http_stream_is_the_grpc_message_as_json_sse() -> None:
    rec = load_http("caikit-http-stream")
    assert rec.status == 200 and rec.headers["content-type"].startswith("text/event-stream")
    events = [e for e in rec.body.decode().split("\r\n\r\n") if e]
    assert all(e.startswith("event: message\r\ndata: ") for e in events)
    payloads = [json.loads(e.split("data: ", 1)[1]) for e in events]
    assert payloads[0]["details"]["input_token_count"] > 0
    assert [p["details"]["generated_tokens"] for p in payloads][-1] == 8
    assert payloads[-1]["details"]["finish_reason"] == "MAX_TOKENS"
    # Each JSON object is the gRPC message type: it parses without unknown keys.
    for p in payloads:
        json_format.ParseDict(p, caikit_data_model_nlp_pb2.GeneratedTextStreamResult())


def test_caikit_http_error_is_an_sse_event_with_http_200() -> None:
    rec = load_http("caikit-http-error-unknown-model")
    assert rec.status == 200
    event, data = rec.body.decode().split("\r\n", 1)
    assert event == "event: error"
    assert json.loads(data.split("data: ", 1)[1])["code"] == 404
