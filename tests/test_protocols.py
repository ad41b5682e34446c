"""The protocol specs: the registry, request building, and interpretation of real servers' recorded streams.

The recorded streams (``tests/data/streams``, see its README) are what vLLM 0.12/0.32, the TGIS
adapter and the Caikit runtime really sent on this machine; HTTP ones are replayed read by read
through the same ``SseSplitter`` the load user uses, gRPC ones message by message.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.load.grpcstream import GrpcStream
from harness.load.plan import LoadPlan, PlanError
from harness.load.prompts import PromptSpec
from harness.load.sseframe import SseSplitter
from harness.protocols.base import Event, GrpcProbe, HttpProbe, ProtocolError
from harness.protocols.grpc_health import health_status
from harness.protocols.proto import caikit_data_model_nlp_pb2 as nlp
from harness.protocols.proto import caikit_nlp_pb2
from harness.protocols.proto import generation_pb2 as pb
from harness.protocols.registry import PROTOCOLS, get_protocol
from recorded_streams import load_grpc, load_http

REPO = Path(__file__).resolve().parents[1]
SIX = ["completions", "chat", "tgi", "tgis", "caikit-grpc", "caikit-http"]
PROMPT = PromptSpec(prompt_tokens=2, output_tokens=8, prompt="hello world")


def _plan(tmp_path: Path, api: str, **kw: Any) -> LoadPlan:
    base: dict[str, Any] = dict(
        run_id="r",
        cell_id="c",
        step_id="s",
        api=api,
        base_url="http://127.0.0.1:9",
        model="tiny-llama",
        kind="concurrency",
        target=1,
        prompts_path=str(tmp_path / "p.jsonl"),
        records_path=str(tmp_path / "r.parquet"),
        health_path=str(tmp_path / "h.json"),
        requests=1,
    )
    if get_protocol(api).transport == "grpc":
        base["grpc_target"] = "127.0.0.1:9"
    base.update(kw)
    return LoadPlan(**base)


def _replay_http(name: str) -> list[Event]:
    """The recording's body reads fed to the load user's splitter, one stamp per read."""
    rec = load_http(name)
    splitter = SseSplitter()
    for i, chunk in enumerate(rec.chunks):
        splitter.feed(chunk, 1000 * (i + 1))
    assert splitter.close() == b""
    return splitter.events


def _replay_grpc(name: str) -> list[Event]:
    rec = load_grpc(name)
    return [(1000 * (i + 1), m) for i, m in enumerate(rec.messages)]


# --- the registry ------------------------------------------------------------------------------------


def test_registry_lists_exactly_the_six_protocols() -> None:
    assert list(PROTOCOLS) == SIX
    assert {p.transport for p in PROTOCOLS.values()} == {"http", "grpc"}
    with pytest.raises(TypeError):
        PROTOCOLS["x"] = PROTOCOLS["tgi"]  # type: ignore[index]  # read-only: nothing registers at run time


def test_unknown_protocol_error_lists_the_known_ones() -> None:
    with pytest.raises(
        ProtocolError, match=r"unknown protocol 'grpc-x' \(known: caikit-grpc, caikit-http, chat"
    ):
        get_protocol("grpc-x")


def test_a_protocol_is_one_module_plus_one_registration_line() -> None:
    registry = (REPO / "harness/protocols/registry.py").read_text()
    for name, spec in PROTOCOLS.items():
        module = name.replace("-", "_")
        assert importlib.import_module(f"harness.protocols.{module}").SPEC is spec
        assert len(re.findall(rf"^\s+{module}\.SPEC,$", registry, re.M)) == 1, module


def test_no_protocol_branches_outside_the_protocols_package() -> None:
    """``api == ...`` (or ``plan.api in (...)``) anywhere else would be a protocol rule living elsewhere."""
    pattern = re.compile(r"""\bapi\s*(==|!=|in\s*[(\[{])|[=!]=\s*["'](completions|tgis?|caikit-\w+)["']""")
    offenders = []
    for path in (REPO / "harness").rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(("harness/protocols/", "harness/sim/")):
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{lineno}: {line.strip()}")
    assert offenders == []


def test_plan_checks_the_protocol_and_its_grpc_address(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"api: unknown protocol 'nope'"):
        LoadPlan(**{**_plan(tmp_path, "completions").to_dict(), "api": "nope"})
    for name in ("tgis", "caikit-grpc"):
        with pytest.raises(PlanError, match="grpc_target"):
            _plan(tmp_path, name, grpc_target=None)


def test_readiness_probes_are_each_servers_own() -> None:
    def paths(name: str) -> list[str]:
        return [p.path if isinstance(p, HttpProbe) else p.method for p in get_protocol(name).readiness]

    assert paths("completions") == paths("chat") == ["/v1/models"]
    assert paths("tgi") == ["/health", "/info"]
    assert paths("tgis") == ["/grpc.health.v1.Health/Check", "/fmaas.GenerationService/ModelInfo"]
    assert paths("caikit-grpc") == [
        "/grpc.health.v1.Health/Check",
        "/caikit.runtime.info.InfoService/GetRuntimeInfo",
    ]
    assert paths("caikit-http") == ["/health"]
    health = get_protocol("tgis").readiness[0]
    assert isinstance(health, GrpcProbe) and health.skip_unimplemented
    assert health_status(b"\x08\x01") == 1 and health.check(b"\x08\x01") is None
    assert "NOT_SERVING" in (health.check(b"\x08\x02") or "")


# --- request building ------------------------------------------------------------------------------------


def test_openai_requests_send_stream_options_only_where_the_plan_says(tmp_path: Path) -> None:
    spec = get_protocol("completions")
    body = orjson.loads(spec.build_request(_plan(tmp_path, "completions"), PROMPT))
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert body["prompt"] == "hello world" and body["min_tokens"] == 8 and body["ignore_eos"] is True
    old = orjson.loads(spec.build_request(_plan(tmp_path, "completions", stream_usage=False), PROMPT))
    assert "stream_options" not in old and old["stream"] is True
    chat = orjson.loads(get_protocol("chat").build_request(_plan(tmp_path, "chat"), PROMPT))
    assert chat["messages"] == [{"role": "user", "content": "hello world"}] and "prompt" not in chat
    assert get_protocol("chat").prompt_style == "chat"
    assert {get_protocol(n).prompt_style for n in SIX if n != "chat"} == {"text"}


def test_tgis_request_matches_what_the_real_server_was_sent(tmp_path: Path) -> None:
    raw = get_protocol("tgis").build_request(_plan(tmp_path, "tgis"), PROMPT)
    assert raw == load_grpc("tgis-generate-stream").request


def test_caikit_grpc_request_and_metadata_match_the_recording(tmp_path: Path) -> None:
    spec = get_protocol("caikit-grpc")
    plan = _plan(tmp_path, "caikit-grpc")
    req = caikit_nlp_pb2.ServerStreamingTextGenerationTaskRequest.FromString(spec.build_request(plan, PROMPT))
    recorded = caikit_nlp_pb2.ServerStreamingTextGenerationTaskRequest.FromString(
        load_grpc("caikit-grpc-stream").request
    )
    assert (req.text, req.max_new_tokens, req.min_new_tokens) == (recorded.text, 8, 8)
    assert req.decoding_method == "GREEDY"
    assert spec.grpc_metadata(plan) == [("mm-model-id", "tiny-llama")]
    assert spec.path == load_grpc("caikit-grpc-stream").method
    hot = caikit_nlp_pb2.ServerStreamingTextGenerationTaskRequest.FromString(
        spec.build_request(_plan(tmp_path, "caikit-grpc", temperature=0.5, ignore_eos=False), PROMPT)
    )
    assert hot.decoding_method == "SAMPLING" and hot.temperature == 0.5 and not hot.HasField("min_new_tokens")


def test_caikit_http_body_matches_the_recording(tmp_path: Path) -> None:
    spec = get_protocol("caikit-http")
    rec = load_http("caikit-http-stream")
    assert orjson.loads(spec.build_request(_plan(tmp_path, "caikit-http"), PROMPT)) == rec.request["json"]
    assert spec.path == rec.request["path"]


# --- interpreting recorded real streams ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "protocol"),
    [
        ("vllm012-completions", "completions"),
        ("vllm012-completions-continuous-usage", "completions"),
        ("vllm012-chat", "chat"),
        ("vllm032-completions", "completions"),
        ("vllm032-completions-continuous-usage", "completions"),
        ("vllm032-chat", "chat"),
        ("caikit-http-stream", "caikit-http"),
    ],
)
def test_recorded_http_streams(name: str, protocol: str) -> None:
    res = get_protocol(protocol).interpret(_replay_http(name))
    assert res.error is None and res.complete
    assert res.completion_tokens == 8 and res.usage_source == "usage"
    assert res.prompt_tokens is not None and res.prompt_tokens > 0
    assert res.text.strip() and res.chunk_times_ns == sorted(res.chunk_times_ns)
    assert res.client_tokens is None  # never the server's count: retokenized later, or n/a
    if res.per_chunk_usage:  # continuous usage: chunk tokens are usage deltas and add up
        assert sum(res.chunk_tokens) == 8


def test_coalesced_first_chunk_carries_three_tokens() -> None:
    res = get_protocol("completions").interpret(_replay_http("vllm012-completions-continuous-usage"))
    assert res.chunk_tokens[0] == 3 and res.per_chunk_usage


@pytest.mark.parametrize(
    ("name", "protocol"), [("tgis-generate-stream", "tgis"), ("caikit-grpc-stream", "caikit-grpc")]
)
def test_recorded_grpc_streams(name: str, protocol: str) -> None:
    events = _replay_grpc(name)
    res = get_protocol(protocol).interpret(events)
    assert res.error is None and res.complete
    assert (res.completion_tokens, res.usage_source, res.prompt_tokens) == (8, "usage", 6)
    assert sum(res.chunk_tokens) == 8
    assert res.chunk_times_ns[0] == events[1][0]  # the acknowledgement is not the first token
    assert res.client_tokens is None
    if protocol == "tgis":
        assert res.chunk_tokens[0] == 2  # the first token message carried two tokens: one chunk of two


def test_cut_grpc_stream_counts_what_arrived_and_is_not_complete() -> None:
    events = _replay_grpc("caikit-grpc-stream")[:4]
    res = get_protocol("caikit-grpc").interpret(events)
    assert not res.complete and res.usage_source == "usage_per_chunk" and res.completion_tokens == 3
    tgis = get_protocol("tgis").interpret(_replay_grpc("tgis-generate-stream")[:3])
    assert not tgis.complete and tgis.completion_tokens == 3


def test_recorded_error_answers() -> None:
    http = load_http("vllm012-error-unknown-model")
    assert http.status == 404  # the HTTP transport classifies it (http_4xx) before any interpretation
    caikit = get_protocol("caikit-http").interpret(_replay_http("caikit-http-error-unknown-model"))
    assert caikit.error is not None and "404" in caikit.error and "no-such-model" in caikit.error
    assert not caikit.chunk_times_ns
    grpc_err = load_grpc("caikit-grpc-error-unknown-model")
    import grpc

    stream = GrpcStream(sent_ns=0, end_ns=1, code=grpc.StatusCode[grpc_err.code], details=grpc_err.details)
    outcome = stream.outcome()
    assert (outcome.error_class, outcome.status) == ("http_4xx", 404)
    tgis_err = load_grpc("tgis-error-min-above-max")
    outcome = GrpcStream(
        sent_ns=0, end_ns=1, code=grpc.StatusCode[tgis_err.code], details=tgis_err.details
    ).outcome()
    assert outcome.error_class == "http_4xx" and "min_new_tokens" in (outcome.error_message or "")


# --- bad payloads and error events -----------------------------------------------------------------------


def test_undecodable_grpc_messages_are_bad_payloads() -> None:
    for name in ("tgis", "caikit-grpc"):
        res = get_protocol(name).interpret([(1, b"\xff\xff\xff")])
        assert res.error is not None and "undecodable" in res.error


def test_grpc_stop_reasons_error() -> None:
    msg = nlp.GeneratedTextStreamResult(
        details=nlp.TokenStreamDetails(generated_tokens=1, finish_reason=nlp.ERROR)
    )
    res = get_protocol("caikit-grpc").interpret([(1, msg.SerializeToString())])
    assert res.error is not None and "ERROR" in res.error
    tgis = pb.GenerationResponse(generated_token_count=1, stop_reason=pb.ERROR)
    assert "ERROR" in (get_protocol("tgis").interpret([(1, tgis.SerializeToString())]).error or "")


def test_caikit_http_malformed_json_and_error_after_tokens() -> None:
    good = _replay_http("caikit-http-stream")[:3]
    res = get_protocol("caikit-http").interpret([*good, (9, b"event: message\ndata: {nope")])
    assert res.error is not None and "malformed JSON" in res.error
    assert sum(res.chunk_tokens) == 2  # what arrived before the bad event is kept
    err = (10, b'event: error\ndata: {"details": "boom", "code": 500}')
    late = get_protocol("caikit-http").interpret([*good, err])
    assert late.error is not None and "500: boom" in late.error and sum(late.chunk_tokens) == 2


# --- the client's own count on real streams: retokenized text, not usage --------------------------------

TINY_TOKENIZER = REPO / ".cache/models/tiny-llama/tokenizer.json"


@pytest.mark.parametrize(
    ("name", "protocol"),
    [
        ("vllm012-completions-continuous-usage", "completions"),
        ("vllm032-chat", "chat"),
        ("tgis-generate-stream", "tgis"),
        ("caikit-grpc-stream", "caikit-grpc"),
        ("caikit-http-stream", "caikit-http"),
    ],
)
def test_real_streams_agree_when_retokenized(tmp_path: Path, name: str, protocol: str) -> None:
    """The recorded servers' usage (8) equals the streamed text retokenized with the model's tokenizer."""
    if not TINY_TOKENIZER.is_file():
        pytest.skip("the tiny model is not built here (make model)")
    from harness.load.httpstream import Outcome
    from harness.load.recordbuild import build_record, finalize_records

    spec = get_protocol(protocol)
    events = _replay_grpc(name) if spec.transport == "grpc" else _replay_http(name)
    result = spec.interpret(events)
    plan = _plan(tmp_path, protocol, tokenizer_path=str(TINY_TOKENIZER))
    outcome = Outcome(status=200, sent_ns=0, end_ns=10**9, splitter=SseSplitter())
    rec = build_record(
        plan,
        request_id=1,
        worker=0,
        scheduled_ns=0,
        warmup=False,
        spec=PROMPT,
        outcome=outcome,
        result=result,
    )
    assert rec.client_output_tokens is None  # nothing counted from usage on the way
    row = finalize_records([rec], [result.text], plan.tokenizer_path)[0]
    assert row["output_tokens"] == row["client_output_tokens"] == 8
    assert row["token_source"] == "usage"
