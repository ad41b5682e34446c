"""TLS for both transports against live servers on 127.0.0.1, with a throw-away CA (openssl CLI).

HTTPS: CA bundle, server-name override, skip-verify (flagged in the step's health). gRPC: CA
bundle and ``ssl_target_name_override``, the bearer token as ``authorization`` metadata, through
readiness, a plain call and a real Locust step. Scenario checks of the ``tls`` block at validate.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_http import OpenAILike, serve
from harness.load.httphead import finish_head, request_prefix
from harness.load.httpstream import StreamClient
from harness.load.runner import run_step
from harness.protocols.base import Endpoint, TlsOptions
from harness.protocols.readiness import wait_until_ready
from harness.protocols.registry import get_protocol
from harness.records import read_records
from harness.scenario import ScenarioError, load_scenario
from load_plans import sim_plan

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
    OpenAILike.bodies = []
    yield from serve(OpenAILike, ctx)


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


# --- gRPC: TLS with a CA bundle and server-name override, bearer token as metadata -------------------------


@pytest.fixture()
def grpc_tls_server(certs: dict[str, Path]) -> Iterator[tuple[str, list[Any]]]:
    """A gRPC server on TLS answering health, runtime info and a 3-message stream as Caikit would."""
    from concurrent import futures

    import grpc

    from harness.protocols.proto import caikit_data_model_nlp_pb2 as nlp

    seen: list[Any] = []

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        seen.append(dict(context.invocation_metadata()))
        for i in range(3):
            finish = nlp.MAX_TOKENS if i == 2 else nlp.NOT_FINISHED
            details = nlp.TokenStreamDetails(
                generated_tokens=i, finish_reason=finish, input_token_count=4 if i == 0 else 0
            )
            yield nlp.GeneratedTextStreamResult(
                generated_text=" tok" if i else "", details=details
            ).SerializeToString()

    def unary(reply: bytes) -> Any:
        def handle(request: bytes, context: Any) -> bytes:
            seen.append(dict(context.invocation_metadata()))
            return reply

        return grpc.unary_unary_rpc_method_handler(handle)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": unary(b"\x08\x01")}),
            grpc.method_handlers_generic_handler(
                "caikit.runtime.info.InfoService", {"GetRuntimeInfo": unary(b"")}
            ),
            grpc.method_handlers_generic_handler(
                "caikit.runtime.Nlp.NlpService",
                {"ServerStreamingTextGenerationTaskPredict": grpc.unary_stream_rpc_method_handler(stream)},
            ),
        ]
    )
    creds = grpc.ssl_server_credentials([(certs["key"].read_bytes(), certs["cert"].read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    yield f"127.0.0.1:{port}", seen
    server.stop(0)


def test_grpc_over_tls_with_server_name_and_bearer_metadata(
    grpc_tls_server: tuple[str, list[Any]], certs: dict[str, Path]
) -> None:
    from harness.load.grpcstream import auth_metadata, stream_call
    from harness.protocols.tls import grpc_channel

    target, seen = grpc_tls_server
    spec = get_protocol("caikit-grpc")
    tls = TlsOptions(ca_bundle=str(certs["ca"]), server_name="bench.internal")
    headers = {"Authorization": "Bearer grpc-secret-9"}
    endpoint = Endpoint(
        "http://127.0.0.1:1", "m", grpc_target=target, grpc_tls=True, tls=tls, headers=headers
    )
    assert wait_until_ready(spec, endpoint, 10) >= 0
    assert seen and all(m.get("authorization") == "Bearer grpc-secret-9" for m in seen)
    channel = grpc_channel(target, tls=True, options=tls)
    try:
        metadata = [*auth_metadata(headers), ("mm-model-id", "m")]
        out = stream_call(channel.unary_stream(spec.path), b"", 10, metadata)
    finally:
        channel.close()
    assert out.outcome().error_class is None and len(out.messages) == 3
    res = spec.interpret(out.events)
    assert res.complete and res.completion_tokens == 2 and res.prompt_tokens == 4
    assert seen[-1]["mm-model-id"] == "m" and seen[-1]["authorization"] == "Bearer grpc-secret-9"
    untrusted = grpc_channel(target, tls=True, options=TlsOptions(server_name="bench.internal"))
    try:
        bad = stream_call(untrusted.unary_stream(spec.path), b"", 5, metadata)
    finally:
        untrusted.close()
    assert bad.outcome().error_class == "connect"  # the system roots do not trust the test CA


def test_a_locust_step_over_grpc_tls_with_bearer_metadata(
    tmp_path: Path, grpc_tls_server: tuple[str, list[Any]], certs: dict[str, Path]
) -> None:
    """The one streaming user, gRPC transport: TLS trust from the plan, auth and model as metadata."""
    target, seen = grpc_tls_server
    plan = sim_plan(
        tmp_path,
        api="caikit-grpc",
        grpc_target=target,
        grpc_tls=True,
        tls_ca_bundle=str(certs["ca"]),
        tls_server_name="bench.internal",
        target=2,
        requests=4,
        simulated=False,
    )
    out = run_step(plan, tmp_path / "step", headers={"Authorization": "Bearer grpc-secret-9"})
    rows = read_records(out.records_path).to_pylist()
    assert len(rows) == 4
    for r in rows:
        assert r["error_class"] is None, r["error_message"]
        assert (r["output_tokens"], r["client_output_tokens"], r["prompt_tokens"]) == (2, 2, 4)
    calls = [m for m in seen if "x-request-id" in m]
    assert {m["x-request-id"] for m in calls} == {f"s-{r['request_id']}" for r in rows}
    assert all(
        m["authorization"] == "Bearer grpc-secret-9" and m["mm-model-id"] == "sim-model" for m in calls
    )
    for path in [*(tmp_path / "step").rglob("*"), Path(out.records_path)]:
        if path.is_file():
            assert b"grpc-secret-9" not in path.read_bytes(), path
