"""The real OpenShift AI stack on this machine: TGIS (vLLM 0.12 + adapter) and Caikit -> TGIS.

Launched through ``launch`` from their own environments with the tiny model; each protocol's
stream is read off the wire with arrival stamps and interpreted by the protocol's own spec
(the code a benchmark uses), and nothing may be left running afterwards, including a Caikit
cell's second process.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import httpx
import pytest

from harness.backends.process import ProcessRegistry
from harness.backends.registry import launch
from harness.envs import ensure_env
from harness.home import models_dir, tokenbench_home
from harness.load.sseframe import SseSplitter
from harness.matrix import Cell
from harness.protocols.proto import caikit_nlp_pb2, generation_pb2
from harness.protocols.registry import get_protocol
from harness.scenario import Server
from harness.tinymodel import make_tiny_model, single_token_words
from leftovers import new_marker, processes_with_marker

HOME = tokenbench_home()  # make and conftest: the checkout's .cache
N = 8
pytestmark = pytest.mark.vllm


def _grpc_events(target: str, method: str, request: bytes, metadata: list) -> tuple[int, list]:
    channel = grpc.insecure_channel(target)
    call = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
    sent = time.monotonic_ns()
    events = [(time.monotonic_ns(), raw) for raw in call(request, metadata=metadata, timeout=120)]
    channel.close()
    return sent, events


def _sse_events(url: str, body: dict) -> tuple[int, list]:
    splitter = SseSplitter()
    sent = time.monotonic_ns()
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        assert response.status_code == 200
        for data in response.iter_raw():
            splitter.feed(data, time.monotonic_ns())
    return sent, list(splitter.events)


def _check(protocol: str, sent: int, events: list) -> None:
    result = get_protocol(protocol).interpret(events)
    assert result.error is None and result.finished, result
    assert result.completion_tokens == N and sum(result.chunk_tokens) == N
    assert result.prompt_tokens and result.prompt_tokens > 0
    ttft, e2e = result.chunk_times_ns[0] - sent, result.chunk_times_ns[-1] - sent
    assert 0 < ttft < e2e


def _server(backend: str, python: Path | None, settings: dict) -> Server:
    model = make_tiny_model(models_dir(HOME) / "tiny-llama")
    return Server(
        name=backend, backend=backend, model=str(model), served_model_name="tiny-llama",
        python=str(python) if python else None, startup_timeout_s=600, max_model_len=512,
        settings={"dtype": "float32", **settings},
    )  # fmt: skip


def _gone(marker: str) -> None:
    deadline = time.monotonic() + 20
    while processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with_marker(marker) == []


def test_tgis_serves_openai_and_tgis_grpc_from_one_engine(tmp_path: Path, monkeypatch) -> None:
    python = ensure_env("tgis", HOME)
    words = " ".join(single_token_words(models_dir(HOME) / "tiny-llama")[:12])
    name, marker = new_marker()
    monkeypatch.setenv(name, marker)
    server = _server("tgis", python, {"max_num_seqs": 4})
    cell = Cell("tgis", server, dict(server.settings), protocol="tgis")
    with (
        ProcessRegistry() as registry,
        launch(cell, tmp_path / "cell", home=HOME, registry=registry) as h,
    ):
        assert h.version and "vllm 0.12.0" in h.version and "vllm-tgis-adapter 0.10.0" in h.version
        assert h.grpc_target and h.launch_s and h.launch_s > 0
        req = generation_pb2.SingleGenerationRequest(
            request=generation_pb2.GenerationRequest(text=words),
            params=generation_pb2.Parameters(
                stopping=generation_pb2.StoppingCriteria(max_new_tokens=N, min_new_tokens=N)
            ),
        )
        sent, events = _grpc_events(
            h.grpc_target, "/fmaas.GenerationService/GenerateStream", req.SerializeToString(), []
        )
        _check("tgis", sent, events)
        # Per-chunk usage, as the harness asks for it (protocols/openai.py STREAM_OPTIONS): the server's
        # detokenizer may hold a byte piece back and send two tokens in one chunk (CI saw 6 chunks for
        # 8 tokens), which only per-chunk usage attributes right.
        body = {"model": h.served_model, "prompt": words, "max_tokens": N, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
        sent, events = _sse_events(h.base_url + "/v1/completions", body)
        _check("completions", sent, events)
        assert processes_with_marker(marker)
    _gone(marker)


def test_caikit_forwards_to_tgis_over_grpc_and_http_and_stops_both(tmp_path: Path, monkeypatch) -> None:
    ensure_env("tgis", HOME)
    python = ensure_env("caikit", HOME)
    name, marker = new_marker()
    monkeypatch.setenv(name, marker)
    server = _server("caikit", python, {"grpc_server_thread_pool_size": 3})
    cell = Cell("caikit", server, dict(server.settings), protocol="caikit-grpc")
    workdir = tmp_path / "cell"
    with ProcessRegistry() as registry, launch(cell, workdir, home=HOME, registry=registry) as h:
        assert set(h.processes) == {"tgis", "caikit"} and len(set(h.processes.values())) == 2
        assert h.env["RUNTIME_GRPC_SERVER_THREAD_POOL_SIZE"] == "3"
        assert "thread pool size: 3" in (workdir / "caikit" / "server.log").read_text(errors="replace")
        assert (workdir / "caikit" / "runtime.yml").is_file()
        assert (workdir / "caikit" / "models" / "tiny-llama" / "config.yml").is_file()
        req = caikit_nlp_pb2.ServerStreamingTextGenerationTaskRequest(
            text="hello world", max_new_tokens=N, min_new_tokens=N
        )
        method = "/caikit.runtime.Nlp.NlpService/ServerStreamingTextGenerationTaskPredict"
        sent, events = _grpc_events(
            h.grpc_target, method, req.SerializeToString(), [("mm-model-id", "tiny-llama")]
        )
        _check("caikit-grpc", sent, events)
        body = {"model_id": "tiny-llama", "inputs": "hello world",
                "parameters": {"max_new_tokens": N, "min_new_tokens": N}}  # fmt: skip
        sent, events = _sse_events(h.base_url + "/api/v1/task/server-streaming-text-generation", body)
        _check("caikit-http", sent, events)
        assert len(processes_with_marker(marker)) >= 2
    _gone(marker)


def test_a_caikit_runtime_that_dies_takes_its_tgis_server_down(tmp_path: Path, monkeypatch) -> None:
    from harness.backends.base import BackendStartError

    ensure_env("tgis", HOME)
    name, marker = new_marker()
    monkeypatch.setenv(name, marker)
    server = _server("caikit", Path("/bin/false"), {})  # the runtime exits at once
    cell = Cell("caikit", server, dict(server.settings), protocol="caikit-grpc")
    with (
        ProcessRegistry() as registry,
        pytest.raises(BackendStartError, match="Caikit runtime did not start"),
    ):
        with launch(cell, tmp_path / "cell", home=HOME, registry=registry):
            pass
    assert (tmp_path / "cell" / "tgis" / "server.log").is_file()  # TGIS did start first
    _gone(marker)
