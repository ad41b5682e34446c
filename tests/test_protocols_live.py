"""Protocol behaviour against live servers on 127.0.0.1: readiness, ``stream_options``, TLS, token agreement.

The servers are the sim (``sim_server``) and tiny in-test HTTP servers that answer exactly what a
case needs: one that rejects ``stream_options`` as vLLM 0.4.x does, one whose usage lies about
its token count, and one behind TLS with a throw-away CA. Assertions are about decisions, counts
and errors, never speed.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from harness.backends.process import free_port
from harness.load.httpstream import StreamClient, finish_head, request_prefix
from harness.load.runner import run_step
from harness.matrix import Step
from harness.metrics import compute_step_metrics
from harness.protocols.base import Endpoint, TlsOptions
from harness.protocols.readiness import NotReady, decide_stream_usage, wait_until_ready
from harness.protocols.registry import get_protocol
from harness.records import read_records
from harness.scenario import ScenarioError, Slo, load_scenario
from load_plans import sim_plan


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class _OpenAILike(BaseHTTPRequestHandler):
    """``/v1/completions`` that streams ``words`` pieces of `` tok`` while its usage claims ``claimed`` tokens.

    ``reject_stream_options``: answer a request carrying ``stream_options`` with vLLM 0.4.x's HTTP 400.
    """

    protocol_version = "HTTP/1.1"
    words = 5
    claimed = 10
    reject_stream_options = False
    bodies: list[dict[str, Any]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._send(200, b'{"data": [{"id": "m"}]}', "application/json")

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        if self.reject_stream_options and "stream_options" in body:
            msg = b"{\"object\":\"error\",\"message\":\"[{'type': 'extra_forbidden', 'loc': ('body', 'stream_options')}]\",\"code\":400}"
            self._send(400, msg, "application/json")
            return
        per = self.claimed // self.words
        out = b"".join(
            _sse({"choices": [{"index": 0, "text": " tok", "finish_reason": None}], "usage": {"prompt_tokens": 3, "completion_tokens": per * (i + 1)}})
            for i in range(self.words)
        )  # fmt: skip
        out += _sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": self.claimed}})
        self._send(200, out + b"data: [DONE]\n\n", "text/event-stream")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


def _serve(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def liar() -> Iterator[str]:
    _OpenAILike.bodies = []
    _OpenAILike.reject_stream_options = False
    yield from _serve(_OpenAILike)


@pytest.fixture()
def old_vllm() -> Iterator[str]:
    _OpenAILike.bodies = []
    _OpenAILike.reject_stream_options = True
    yield from _serve(_OpenAILike)
    _OpenAILike.reject_stream_options = False


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
    assert len(_OpenAILike.bodies) == 1 and _OpenAILike.bodies[0]["max_tokens"] == 1
    assert decide_stream_usage(spec, "on", Endpoint(base_url=old_vllm, model="m")) == (
        True,
        "stream_usage: on",
    )
    tgi = decide_stream_usage(get_protocol("tgi"), "auto", Endpoint(base_url=old_vllm, model="m"))
    assert tgi[0] is False and len(_OpenAILike.bodies) == 1  # nothing to probe for TGI


def test_stream_usage_auto_accepts_a_current_server(liar: str) -> None:
    sent, why = decide_stream_usage(get_protocol("chat"), "auto", Endpoint(base_url=liar, model="m"))
    assert sent is True and "accepted" in why
    assert _OpenAILike.bodies[0]["messages"] and _OpenAILike.bodies[0]["stream_options"]


def test_a_plan_without_stream_usage_runs_against_an_old_server(tmp_path: Path, old_vllm: str) -> None:
    plan = sim_plan(tmp_path, base_url=old_vllm, target=1, requests=2, simulated=False, stream_usage=False)
    rows = read_records(run_step(plan, tmp_path / "step").records_path).to_pylist()
    assert [r["error_class"] for r in rows] == [None, None]
    assert all("stream_options" not in b for b in _OpenAILike.bodies)


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


# --- TLS --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA and a server certificate for ``bench.internal`` signed by it (openssl CLI)."""
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tb-test-ca",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=bench.internal",
    )
    (d / "ext.cnf").write_text("subjectAltName=DNS:bench.internal\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return {"ca": d / "ca.pem", "cert": d / "srv.pem", "key": d / "srv.key"}


@pytest.fixture()
def tls_server(certs: dict[str, Path]) -> Iterator[str]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs["cert"], certs["key"])
    _OpenAILike.bodies = []
    yield from _serve(_OpenAILike, ctx)


def _post(client: StreamClient, base_url: str) -> Any:
    head = finish_head(
        request_prefix(base_url, "/v1/completions", {"Content-Type": "application/json"}), "t-1", 2
    )
    return client.post(head, b"{}", 10.0)


def test_https_with_a_ca_bundle_and_server_name(tls_server: str, certs: dict[str, Path]) -> None:
    trusted = TlsOptions(ca_bundle=str(certs["ca"]), server_name="bench.internal")
    out = _post(StreamClient(tls_server, 5.0, tls=trusted), tls_server)
    assert out.error_class is None and out.status == 200
    wrong_name = _post(StreamClient(tls_server, 5.0, tls=TlsOptions(ca_bundle=str(certs["ca"]))), tls_server)
    assert wrong_name.error_class == "connect" and "certificate" in (wrong_name.error_message or "").lower()
    untrusted = _post(StreamClient(tls_server, 5.0), tls_server)
    assert untrusted.error_class == "connect"
    skip = _post(StreamClient(tls_server, 5.0, tls=TlsOptions(insecure_skip_verify=True)), tls_server)
    assert skip.error_class is None
    assert wait_until_ready(get_protocol("completions"), Endpoint(tls_server, "m", tls=trusted), 5) >= 0


def test_insecure_skip_verify_is_flagged_in_the_step_health(tmp_path: Path, tls_server: str) -> None:
    plan = sim_plan(
        tmp_path, base_url=tls_server, target=1, requests=1, simulated=False, tls_insecure_skip_verify=True
    )
    run_step(plan, tmp_path / "step")
    health = json.loads(Path(plan.health_path).read_text())
    assert any("insecure_skip_verify" in r for r in health["reasons"])


def _scenario(tmp_path: Path, server: dict[str, Any]) -> Path:
    data = {
        "name": "tls",
        "servers": [{"name": "e", "backend": "external", "model": "m", "base_url": "https://h", **server}],
        "workload": {"prompt_tokens": 4, "output_tokens": 4, "steps": {"concurrency": [1]}, "requests": 2},
    }
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(data))
    return path


def test_scenario_tls_fields_are_checked_at_validate(tmp_path: Path, certs: dict[str, Path]) -> None:
    with pytest.raises(
        ScenarioError, match=r"servers\[0\]\.tls\.ca_bundle: no such file \(got '.*missing\.pem'\)"
    ):
        load_scenario(_scenario(tmp_path, {"tls": {"ca_bundle": "missing.pem"}}))
    with pytest.raises(ScenarioError, match="insecure_skip_verify is not supported for gRPC protocol 'tgis'"):
        load_scenario(_scenario(tmp_path, {"api": "tgis", "tls": {"insecure_skip_verify": True}}))
    (tmp_path / "ca.pem").write_bytes(certs["ca"].read_bytes())
    ok = load_scenario(_scenario(tmp_path, {"tls": {"ca_bundle": "ca.pem", "server_name": "bench.internal"}}))
    opts = ok.servers[0].tls_options()
    assert opts.ca_bundle == str(tmp_path / "ca.pem") and opts.server_name == "bench.internal"
    with pytest.raises(ScenarioError, match=r"servers\[0\]\.stream_usage"):
        load_scenario(_scenario(tmp_path, {"stream_usage": "maybe"}))
