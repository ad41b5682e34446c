"""Protocol behaviour against live servers on 127.0.0.1: token agreement, ``stream_options``, readiness, Caikit HTTP.

The servers are the sim (``sim_server``) and tiny in-test HTTP servers (``fake_http``) that answer
exactly what a case needs: one that rejects ``stream_options`` as vLLM 0.4.x does, one whose usage
lies about its token count, one that replays a real Caikit runtime's recorded bytes. Assertions are
about decisions, counts and errors, never speed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from fake_http import OpenAILike, serve
from harness.backends.process import free_port
from harness.load.runner import run_step
from harness.matrix import Step
from harness.metrics import compute_step_metrics
from harness.protocols.base import Endpoint
from harness.protocols.readiness import NotReady, decide_stream_usage, wait_until_ready
from harness.protocols.registry import get_protocol
from harness.records import read_records
from harness.scenario import Slo
from load_plans import sim_plan
from recorded_streams import load_http


@pytest.fixture()
def liar() -> Iterator[str]:
    OpenAILike.bodies = []
    OpenAILike.reject_stream_options = False
    yield from serve(OpenAILike)


@pytest.fixture()
def old_vllm() -> Iterator[str]:
    OpenAILike.bodies = []
    OpenAILike.reject_stream_options = True
    yield from serve(OpenAILike)
    OpenAILike.reject_stream_options = False


# --- token agreement is not circular -------------------------------------------------------------------


def test_a_server_whose_usage_lies_shows_disagreement(tmp_path: Path, liar: str) -> None:
    """5 streamed words claiming 10 tokens: usage says 10, the client counts 5, agreement < 1."""
    plan = sim_plan(tmp_path, base_url=liar, target=1, requests=3, simulated=False)
    out = run_step(plan, tmp_path / "step")
    rows = read_records(out.records_path).to_pylist()
    assert len(rows) == 3
    for r in rows:
        assert r["error_class"] is None, r["error_message"]
        assert (r["output_tokens"], r["token_source"]) == (10, "usage")
        assert r["client_output_tokens"] == 5  # the streamed text, retokenized: not the usage deltas
        assert sum(r["chunk_tokens"]) == 10  # per-chunk timing still follows the server's deltas
    frame = pq.read_table(out.records_path).to_pandas()
    metrics = compute_step_metrics(frame, step=Step("s", "concurrency", 1.0), slo=Slo())
    assert metrics.token_agreement is not None and metrics.token_agreement < 1.0
    assert metrics.token_agreement == 0.0


def test_without_a_tokenizer_the_client_count_is_na(tmp_path: Path, liar: str) -> None:
    plan = sim_plan(tmp_path, base_url=liar, target=1, requests=2, simulated=False, tokenizer_path=None)
    rows = read_records(run_step(plan, tmp_path / "step").records_path).to_pylist()
    assert [r["client_output_tokens"] for r in rows] == [None, None]
    frame = pq.read_table(tmp_path / "records.parquet").to_pandas()
    assert compute_step_metrics(frame, step=Step("s", "concurrency", 1.0), slo=Slo()).token_agreement is None


# --- stream_options only where the server takes it -------------------------------------------------------


def test_stream_usage_auto_probes_once_and_respects_a_rejection(old_vllm: str) -> None:
    spec = get_protocol("completions")
    sent, why = decide_stream_usage(spec, "auto", Endpoint(base_url=old_vllm, model="m"))
    assert sent is False and "rejected stream_options" in why
    assert len(OpenAILike.bodies) == 1 and OpenAILike.bodies[0]["max_tokens"] == 1
    assert decide_stream_usage(spec, "on", Endpoint(base_url=old_vllm, model="m")) == (
        True,
        "stream_usage: on",
    )
    tgi = decide_stream_usage(get_protocol("tgi"), "auto", Endpoint(base_url=old_vllm, model="m"))
    assert tgi[0] is False and len(OpenAILike.bodies) == 1  # nothing to probe for TGI


def test_stream_usage_auto_accepts_a_current_server(liar: str) -> None:
    sent, why = decide_stream_usage(get_protocol("chat"), "auto", Endpoint(base_url=liar, model="m"))
    assert sent is True and "accepted" in why
    assert OpenAILike.bodies[0]["messages"] and OpenAILike.bodies[0]["stream_options"]


def test_a_plan_without_stream_usage_runs_against_an_old_server(tmp_path: Path, old_vllm: str) -> None:
    plan = sim_plan(tmp_path, base_url=old_vllm, target=1, requests=2, simulated=False, stream_usage=False)
    rows = read_records(run_step(plan, tmp_path / "step").records_path).to_pylist()
    assert [r["error_class"] for r in rows] == [None, None]
    assert all("stream_options" not in b for b in OpenAILike.bodies)


# --- readiness by protocol --------------------------------------------------------------------------------


def test_readiness_by_each_protocols_own_probes(sim_server: Any) -> None:
    grpc_port = free_port()
    sim = sim_server(grpc_port=grpc_port)
    endpoint = Endpoint(base_url=sim.base_url, model="sim-model", grpc_target=f"127.0.0.1:{grpc_port}")
    for name in ("completions", "chat", "tgi", "tgis"):
        assert wait_until_ready(get_protocol(name), endpoint, 20) >= 0


def test_not_ready_names_the_probe_that_kept_failing(liar: str) -> None:
    port = free_port()
    with pytest.raises(
        NotReady, match=rf"caikit-http\); last error: GET http://127.0.0.1:{port}/health: ConnectError"
    ):
        wait_until_ready(
            get_protocol("caikit-http"), Endpoint(f"http://127.0.0.1:{port}", "m"), 0.5, interval_s=0.1
        )
    with pytest.raises(
        NotReady, match=rf"gRPC /grpc.health.v1.Health/Check at 127.0.0.1:{port}: UNAVAILABLE"
    ):
        wait_until_ready(get_protocol("tgis"), Endpoint(liar, "m", grpc_target=f"127.0.0.1:{port}"), 0.5)
    with pytest.raises(NotReady, match="no gRPC address"):
        wait_until_ready(get_protocol("caikit-grpc"), Endpoint(liar, "m"), 1)


# --- Caikit HTTP through the real load user, on a real runtime's bytes ----------------------------------


class _CaikitReplay(BaseHTTPRequestHandler):
    """Answers the streaming task with the bytes the real Caikit runtime sent (CRLF SSE, HTTP 200)."""

    protocol_version = "HTTP/1.1"
    body = b""
    requests: list[tuple[str, dict[str, Any]]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._send(200 if self.path == "/health" else 404, b"OK", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        type(self).requests.append(
            (self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        )
        self._send(200, self.body, "text/event-stream")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.mark.parametrize("recording", ["caikit-http-stream", "caikit-http-error-unknown-model"])
def test_caikit_http_run_on_recorded_bytes(tmp_path: Path, recording: str) -> None:
    _CaikitReplay.body = load_http(recording).body
    _CaikitReplay.requests = []
    for base_url in serve(_CaikitReplay):
        spec = get_protocol("caikit-http")
        assert wait_until_ready(spec, Endpoint(base_url, "tiny-llama"), 5) >= 0
        plan = sim_plan(tmp_path, api="caikit-http", base_url=base_url, target=1, requests=2, simulated=False)
        rows = read_records(run_step(plan, tmp_path / "step").records_path).to_pylist()
    assert [p for p, _ in _CaikitReplay.requests] == [spec.path] * 2
    assert _CaikitReplay.requests[0][1]["parameters"]["min_new_tokens"] == 16
    for r in rows:
        assert r["status"] == 200
        if recording == "caikit-http-stream":
            assert r["error_class"] is None, r["error_message"]
            assert (r["output_tokens"], r["token_source"], r["prompt_tokens"]) == (8, "usage", 6)
            assert r["client_output_tokens"] == 8 and r["chunk_tokens"] == [1] * 8
        else:  # HTTP 200 with an SSE error event: an error, not a short answer
            assert r["error_class"] == "bad_payload" and "not loaded" in r["error_message"]
